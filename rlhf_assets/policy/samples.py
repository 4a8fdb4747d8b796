"""Sampling a stored policy's answers to prompts as it was trained to answer them: the temperature and token limits
of its own training config unless given. What the annotation queue's release pairs (policy vs its reference) and
the distilled reward model's policy samples (rm_distilled) both draw. No Dagster here."""

from __future__ import annotations

from collections.abc import Sequence

from rlhf_assets.registry.artifacts import ArtifactStore


def sample_answers(store: ArtifactStore, artifact_id: str, prompts: Sequence[str], *, seed: int,
                   temperature: float | None = None, max_new_tokens: int | None = None) -> tuple[list[str], float]:
    """One sampled answer per prompt from the stored policy (seeded), and the temperature it was sampled at."""
    from rlhf_assets.evaluation.adversarial import answer
    from rlhf_assets.policy.artifacts import load_policy
    from rlhf_assets.policy.runtime import device_for

    model, tok, doc = load_policy(store.get(artifact_id), device_for())
    train = doc.get("train_config") or {}
    t = temperature or float(train.get("temperature") or 1.0)
    out = answer(model.eval(), tok, list(prompts), max_prompt_tokens=int(train.get("max_prompt_tokens") or 256),
                 max_new_tokens=max_new_tokens or int(train.get("max_new_tokens") or 48), temperature=t, seed=seed)
    return [a["response"] for a in out], t
