"""``policy sft`` / ``policy ppo``: the policy process entry point (also the Dagster Pipes external process).

    python -m rlhf_assets.policy.entrypoint sft --config sft.json --data sft.jsonl --out runs/sft
    python -m rlhf_assets.policy.entrypoint ppo --config ppo.json --sft ID|DIR --reward-model ID|DIR \\
        [--calibration calibration.json] --prompts prompts.jsonl --eval-prompts heldout.jsonl --out runs/ppo

Every :class:`~rlhf_assets.policy.config.SFTConfig` / :class:`~rlhf_assets.policy.config.PPOConfig` field is also a
flag (``--steps``, ``--clip-coef``, …; ``--help`` lists them with their defaults) on top of ``--config``. Data files
are JSONL: SFT rows ``{"prompt", "response"}``, prompt rows ``{"prompt"}``. ``--sft`` and ``--reward-model`` take
an artifact id (or unique prefix), an artifact directory, or ``latest``. ``--calibration`` is rm_calibration's
JSON record (or a bare calibrator dict); without it the raw reward-model score is used. Rerunning the same command
with the same ``--out`` resumes from its last checkpoint (with ``--checkpoint-key``, also on a fresh machine: from
the storage root's mirror of it). Each command prints one JSON summary line at the end;
under Dagster Pipes (rank 0) progress goes to the run's logs and the result, metrics and plots to the
materialization (rlhf_assets/training_process.py). Exit codes: 0 success, 2 bad input.

On N processes, the same command under torchrun (policy/distributed.py; ``--out`` on storage every rank sees)::

    torchrun --nproc-per-node N -m rlhf_assets.policy.entrypoint ppo ...

Rank 0 logs, reports to Dagster, writes checkpoints and the artifact and prints the summary; a checkpoint written
by any N resumes on any other N.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_assets.policy.config import PPOConfig, SFTConfig
from rlhf_assets.policy.distributed import process_group
from rlhf_assets.training_process import Command, Process, png_markdown, run_commands


def _sft_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="SFT rows JSONL: prompt, response.")
    p.add_argument("--val-data", help="Held-out SFT rows JSONL (reported as val_nll).")


def _ppo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sft", required=True, help="SFT policy: artifact id, directory or 'latest'.")
    p.add_argument("--reward-model", required=True, help="Reward model: artifact id, directory or 'latest'.")
    p.add_argument("--calibration", help="rm_calibration record (JSON) or a calibrator dict.")
    p.add_argument("--prompts", required=True, help="Training prompts JSONL: prompt.")
    p.add_argument("--eval-prompts", required=True, help="Held-out prompts JSONL: prompt.")
    p.add_argument("--sft-data", help="SFT rows JSONL mixed into PPO (sft_mix_share).")
    p.add_argument("--length-pairs", help="Validation pairs JSONL (prompt, chosen, rejected) the length-debiased "
                                          "reward is fitted on (length_debias).")


def _sft(args: argparse.Namespace, config: SFTConfig, process: Process) -> dict[str, Any]:
    from rlhf_assets.jsonl_rows import read_jsonl
    from rlhf_assets.policy.sft import train_sft

    rows = read_jsonl(args.data, ("prompt", "response"))
    val = read_jsonl(args.val_data, ("prompt", "response")) if args.val_data else []
    with process_group():
        r = train_sft(config, rows, args.out, val_rows=val, dataset_id=args.dataset_id, log=process.logger,
                      checkpoints=process.checkpoints)
    if not process.is_rank_zero:
        return None
    process.report({"artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "global_step": r.global_step,
                    "tokens_per_s": float(r.tokens_per_s), "wall_time_s": float(r.wall_time_s),
                    "resumed_from_step": -1 if r.resumed_from_step is None else r.resumed_from_step,
                    **{k: float(v) for k, v in r.metrics.items()}}, r.artifact_id)
    return {"artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "metrics": r.metrics,
            "global_step": r.global_step, "resumed_from_step": r.resumed_from_step,
            "tokens_per_s": round(r.tokens_per_s, 1)}


def _calibrator(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read calibration {path}: {exc}") from None
    return doc.get("calibrator", doc) if isinstance(doc, dict) else None


def _ppo(args: argparse.Namespace, config: PPOConfig, process: Process) -> dict[str, Any]:
    from rlhf_assets.jsonl_rows import read_jsonl
    from rlhf_assets.policy.plots import kl_and_beta_png, length_png, reward_vs_sqrt_kl_png
    from rlhf_assets.policy.ppo import train_ppo
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.storage import storage_from_env

    store = ArtifactStore(storage_from_env())
    sft_dir = store.resolve(args.sft, kind="sft_policy")
    rm_dir = store.resolve(args.reward_model, kind="reward_model")
    prompts = [r["prompt"] for r in read_jsonl(args.prompts, ("prompt",))]
    eval_prompts = [r["prompt"] for r in read_jsonl(args.eval_prompts, ("prompt",))]
    sft_rows = read_jsonl(args.sft_data, ("prompt", "response")) if args.sft_data else []
    length_pairs = read_jsonl(args.length_pairs, ("prompt", "chosen", "rejected")) if args.length_pairs else []
    parents = list(args.parents) or [Path(sft_dir).name, Path(rm_dir).name]
    with process_group():
        r = train_ppo(config, sft_dir, rm_dir, prompts, eval_prompts, args.out,
                      calibrator=_calibrator(args.calibration), sft_rows=sft_rows, dataset_id=args.dataset_id,
                      parent_ids=parents, log=process.logger, checkpoints=process.checkpoints,
                      length_pairs=length_pairs)
    if not process.is_rank_zero:
        return None
    if process.pipes is not None:
        cfg = config.resolved()
        last = r.history[-1] if r.history else {}
        process.report({
            "artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "selected_step": r.selected_step,
            "selected_proxy_reward": r.selected["proxy_reward"], "selected_kl": r.selected["kl"],
            "stop_reason": r.stop_reason or "", "events": r.events, "steps_run": len(r.history),
            "rollout_tokens_per_s": float(r.rollout_tokens_per_s), "train_tokens_per_s": float(r.train_tokens_per_s),
            "resumed_from_step": -1 if r.resumed_from_step is None else r.resumed_from_step,
            **{f"last_{k}": float(v) for k, v in last.items() if isinstance(v, (int, float))},
            "history": r.history, "evals": r.evals,
            "reward_vs_sqrt_kl": {"raw_value": png_markdown(reward_vs_sqrt_kl_png(
                r.evals, r.selected_step, cfg.kl_budget), "reward vs sqrt KL"), "type": "md"},
            "kl_and_beta": {"raw_value": png_markdown(kl_and_beta_png(r.history, cfg.kl_target), "KL and beta"),
                            "type": "md"},
            "response_length": {"raw_value": png_markdown(length_png(r.history), "response length"), "type": "md"},
        }, r.artifact_id)
    return {"artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "selected_step": r.selected_step,
            "selected": r.selected, "stop_reason": r.stop_reason, "steps_run": len(r.history),
            "resumed_from_step": r.resumed_from_step, "events": r.events,
            "rollout_tokens_per_s": round(r.rollout_tokens_per_s, 1),
            "train_tokens_per_s": round(r.train_tokens_per_s, 1)}


COMMANDS = (
    Command("sft", "Fine-tune the base policy on chosen responses.", _sft, SFTConfig, _sft_arguments),
    Command("ppo", "PPO against the calibrated reward model under a KL penalty.", _ppo, PPOConfig, _ppo_arguments),
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands("policy", "Policy: SFT start point and PPO.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
