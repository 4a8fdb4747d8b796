"""``rm train`` / ``rm eval``: the reward-model process entry point (also the Dagster Pipes external process).

    python -m rlhf_assets.reward.entrypoint train --pairs train.jsonl --val-pairs val.jsonl --out runs/rm [...]
    python -m rlhf_assets.reward.entrypoint eval --model latest|ID|DIR --pairs val.jsonl [--json]
    torchrun --nproc-per-node 8 -m rlhf_assets.reward.entrypoint train --strategy ddp --devices 8 ...

``train`` takes every :class:`~rlhf_assets.reward.config.RMConfig` field as a flag (``--max-length``, ``--lr``, …;
``--help`` lists them with their defaults) on top of an optional ``--config`` file, and prints one JSON line at the
end (rank 0): ``{"artifact_id", "artifact_uri", "metrics", ...}``. ``eval`` prints
``{"n", "accuracy", "auc", "ece", "log_loss"}`` with ``--json`` (NaN → null).

Multi-process: with ``--strategy ddp --devices N`` Lightning re-launches this same command for ranks 1..N-1
(``LOCAL_RANK`` set); under ``torchrun`` Lightning reads torchrun's environment instead. Only rank 0 prints the
summary and, when launched through Dagster Pipes, reports (rlhf_assets/training_process.py). Exit codes: 0
success, 2 bad input (config, pairs file, unknown artifact).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_assets.reward.config import RMConfig
from rlhf_assets.storage import atomic_write_local
from rlhf_assets.training_process import Command, Process, run_commands


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, help="Training pairs JSONL: prompt, chosen, rejected[, target, weight].")
    p.add_argument("--val-pairs", help="Validation pairs JSONL (default: a seeded 10%% hold-out of --pairs).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar even on a terminal.")
    p.add_argument("--artifact-kind", default="reward_model", choices=["reward_model", "judge_reward_model"],
                   help="The artifact's role in the store (judge_reward_model: a release's independent judge).")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Artifact id (or unique prefix), artifact directory, or 'latest'.")
    p.add_argument("--pairs", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="Seed of the pair orientation used for AUC/ECE.")
    p.add_argument("--json", action="store_true", dest="as_json")


def split_holdout(pairs_path: Path, out_dir: Path, seed: int) -> tuple[Path, Path]:
    """A seeded 90/10 split of one pairs file (at least one val pair), written under ``out_dir/split``."""
    import numpy as np

    lines = [ln for ln in pairs_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{pairs_path}: need at least 2 pairs to hold out a validation split (or pass --val-pairs)")
    n_val = max(1, len(lines) // 10)
    val_idx = set(np.random.default_rng(seed).choice(len(lines), n_val, replace=False).tolist())
    split = out_dir / "split"
    split.mkdir(parents=True, exist_ok=True)
    train_p, val_p = split / "train.jsonl", split / "val.jsonl"
    # Every rank writes the same bytes (atomically): under torchrun no rank can read a file another is writing.
    for path, rows in ((train_p, [ln for i, ln in enumerate(lines) if i not in val_idx]),
                       (val_p, [ln for i, ln in enumerate(lines) if i in val_idx])):
        atomic_write_local(path, ("\n".join(rows) + "\n").encode("utf-8"))
    return train_p, val_p


def _train(args: argparse.Namespace, config: RMConfig, process: Process) -> dict[str, Any] | None:
    out, pairs = Path(args.out), Path(args.pairs)
    if args.val_pairs:
        train_path, val_path = pairs, Path(args.val_pairs)
    else:
        if not pairs.is_file():
            raise ValueError(f"pairs file {pairs} does not exist")
        train_path, val_path = split_holdout(pairs, out, config.seed)

    from rlhf_assets.reward.train import train_reward_model

    result = train_reward_model(config, train_path, val_path, out, dataset_id=args.dataset_id,
                                parent_ids=tuple(args.parents), progress=not args.no_progress, log=process.logger,
                                artifact_kind=args.artifact_kind, checkpoints=process.checkpoints)
    if result is None:  # not rank 0
        return None
    process.report({
        "artifact_id": result.artifact_id, "artifact_uri": result.artifact_uri,
        "dataset_id": result.dataset_id or "", "n_truncated": result.n_truncated,
        "global_step": result.global_step, "epochs_completed": result.epochs_completed,
        "selected_checkpoint": result.selected_checkpoint, "tokens_per_s": float(result.tokens_per_s),
        "wall_time_s": float(result.wall_time_s),
        "resumed_from_step": result.resumed_from_step if result.resumed_from_step is not None else -1,
        "truncation": result.truncation, **{k: float(v) for k, v in result.metrics.items()},
    }, result.artifact_id)
    return {"artifact_id": result.artifact_id, "artifact_uri": result.artifact_uri, "metrics": result.metrics,
            "n_truncated": result.n_truncated, "global_step": result.global_step,
            "resumed_from_step": result.resumed_from_step, "tokens_per_s": round(result.tokens_per_s, 1),
            "wall_time_s": result.wall_time_s}


def _eval(args: argparse.Namespace, _config: None, _process: Process) -> dict[str, Any] | None:
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.reward.artifact import load_reward_model
    from rlhf_assets.reward.evaluate import evaluate_pairs
    from rlhf_assets.storage import storage_from_env

    artifact_dir = ArtifactStore(storage_from_env()).resolve(args.model, kind="reward_model")
    result = evaluate_pairs(load_reward_model(artifact_dir), args.pairs, batch_size=args.batch_size, seed=args.seed)
    if args.as_json:
        return result
    print(f"model:    {artifact_dir}")
    for key in ("n", "accuracy", "auc", "ece", "log_loss"):
        value = result[key]
        print(f"{key + ':':<9} {value if isinstance(value, int) else f'{value:.4f}'}")
    return None


COMMANDS = (
    Command("train", "Train a Bradley–Terry reward model and store it as an artifact.", _train, RMConfig,
            _train_arguments, default_out="runs/reward_model"),
    Command("eval", "Evaluate a stored reward model on preference pairs.", _eval, None, _eval_arguments,
            training=False),
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands("rm", "Reward model: train (Lightning) and evaluate.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
