"""One policy version ready to serve behind its guard: the policy, its frozen reference (the release's SFT policy),
and the release's calibrated reward model (what the log records as ``reward``, the proxy OPE reads).

For a batch of prompts: sample from the policy (KV cache, evaluation/logged.py's temperature convention), then one
batched fp32 teacher-forced pass of the policy and one of the reference over the same generated tokens. The policy's
token log-probs are the behaviour log-probs the log records; ``kl`` = Σ_t log π(y_t|x,y<t) − log π_ref(y_t|x,y<t)
is the response's log-likelihood ratio to its reference (the single-sample KL estimate, the same quantity PPO's
penalty and the ``kl_within_budget`` check average). Both are computed before anything is returned, so no response
leaves the service unguarded. ``run`` (one micro-batch: sample, the reference's pass, the reward) and
``run_reference`` are what the pool's micro-batchers call (serving/batcher.py), so concurrent requests share them.
No HTTP, no asyncio (the batchers run these in their worker threads).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlhf_assets.evaluation.sequence_ope import check_same_tokenizer
from rlhf_assets.policy.artifacts import load_policy
from rlhf_assets.policy.data import encode_prompt
from rlhf_assets.policy.inference import rollout, teacher_forced_logprobs
from rlhf_assets.policy.reward_fn import ProxyReward
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.reward.artifact import load_reward_model


@dataclass(frozen=True)
class PolicyTarget:
    """What one alias serves: the policy, its reference, the reward model (and calibration) of its release."""

    policy_id: str
    reference_id: str
    reward_model_id: str
    calibration_id: str | None = None
    release: str | None = None


@dataclass
class Generated:
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: np.ndarray      # log π(y_t | …) at the sampling temperature, teacher-forced fp32
    ref_logprobs: np.ndarray  # log π_ref of the same tokens, same temperature
    kl: float                 # Σ (logprobs − ref_logprobs)
    reward: float | None = None  # the release's calibrated reward of (prompt, text), set by run()


@dataclass(frozen=True)
class Sampling:
    temperature: float
    max_new_tokens: int
    max_prompt_tokens: int


class ServedPolicy:
    """Loaded in a worker thread; ``lock`` serialises the forward passes of one version."""

    def __init__(self, store: ArtifactStore, target: PolicyTarget, *, temperature: float | None = None,
                 max_new_tokens: int | None = None, max_prompt_tokens: int | None = None):
        self.target = target
        self.policy, self.tokenizer, doc = load_policy(store.get(target.policy_id))
        self.reference, ref_tok, _ = load_policy(store.get(target.reference_id))
        self.policy.eval()
        self.reference.eval()
        check_same_tokenizer(self.tokenizer, ref_tok)  # a ratio compares probabilities of the same token ids
        train = doc.get("train_config") or {}

        def pick(name: str, given: Any, fallback: Any) -> Any:
            return given if given is not None else train.get(name, fallback)

        self.sampling = Sampling(float(pick("temperature", temperature, 1.0)),
                                 int(pick("max_new_tokens", max_new_tokens, 64)),
                                 int(pick("max_prompt_tokens", max_prompt_tokens, 256)))
        calibrator = None
        if target.calibration_id:
            calibrator = json.loads((store.get(target.calibration_id) / "calibration.json").read_text()) \
                .get("calibrator")
        self.reward = ProxyReward(load_reward_model(store.get(target.reward_model_id)), calibrator)
        self.lock = threading.Lock()

    def item_tokens(self, prompt_ids: Sequence[int]) -> int:
        """What one prompt costs a batch, in tokens: its own and the response cap (the micro-batcher's length)."""
        return len(prompt_ids) + self.sampling.max_new_tokens

    def run(self, items: Sequence[tuple[str, list[int]]]) -> tuple[list[Generated]]:
        """One micro-batch of (prompt, prompt ids): sampled, guarded by the reference's pass and rewarded together
        (one column: the Generated per item)."""
        out = self.generate([ids for _, ids in items], torch.Generator().manual_seed(secrets.randbits(62)))
        for g, r in zip(out, self.rewards([p for p, _ in items], [g.text for g in out])):
            g.reward = r
        return (out,)

    def run_reference(self, items: Sequence[list[int]]) -> tuple[list[str]]:
        """One micro-batch of guarded prompts' ids: the reference's answers (one column)."""
        return (self.reference_answers(items, torch.Generator().manual_seed(secrets.randbits(62))),)

    def encode(self, prompt: str) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.sampling.max_prompt_tokens)

    def generate(self, prompt_ids: Sequence[list[int]], generator: torch.Generator) -> list[Generated]:
        """Sample one response per prompt and score its tokens under the policy and the reference (batched)."""
        s, pad = self.sampling, self.tokenizer.pad_token_id
        with self.lock:
            responses, texts, logprobs = rollout(self.policy, self.tokenizer, prompt_ids,
                                                 max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                                 generator=generator)
            ref = teacher_forced_logprobs(self.reference, prompt_ids, responses, pad, temperature=s.temperature)
        return [Generated(list(p), r, t, lp, rl, float((lp - rl).sum()))
                for p, r, t, lp, rl in zip(prompt_ids, responses, texts, logprobs, ref)]

    def reference_answers(self, prompt_ids: Sequence[list[int]], generator: torch.Generator) -> list[str]:
        """The frozen reference's own sampled answers (what a guarded response is replaced by)."""
        s = self.sampling
        with self.lock:
            _, texts, _ = rollout(self.reference, self.tokenizer, prompt_ids, max_new_tokens=s.max_new_tokens,
                                  temperature=s.temperature, generator=generator)
        return texts

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The release's calibrated reward of each (prompt, response): the log's ``reward`` column."""
        with self.lock:
            out = self.reward.raw(prompts, responses)
        return [float(v) for v in np.asarray(out, dtype=np.float64)]

    def warm_up(self) -> None:
        ids = self.encode("warm up") or [self.tokenizer.eos_token_id]
        self.generate([ids], torch.Generator().manual_seed(0))
