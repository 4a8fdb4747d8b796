"""``rm train`` / ``rm eval``: the reward-model process entry point (also the Dagster Pipes external process).

    python -m rlhf_assets.reward.entrypoint train --pairs train.jsonl --val-pairs val.jsonl --out runs/rm [...]
    python -m rlhf_assets.reward.entrypoint eval --model latest|ID|DIR --pairs val.jsonl [--json]
    torchrun --nproc-per-node 8 -m rlhf_assets.reward.entrypoint train --strategy ddp --devices 8 ...

``train`` prints one JSON line at the end (rank 0): ``{"artifact_id", "artifact_uri", "metrics", ...}``.
``eval`` prints ``{"n", "accuracy", "auc", "ece", "log_loss"}`` with ``--json`` (NaN → null).

Multi-process: with ``--strategy ddp --devices N`` Lightning re-launches this same command for ranks 1..N-1
(``LOCAL_RANK`` set); under ``torchrun`` Lightning reads torchrun's environment instead. Only rank 0 (``RANK`` /
``LOCAL_RANK`` 0 or unset) prints the summary and, when ``DAGSTER_PIPES_CONTEXT`` is set, opens Dagster Pipes:
progress goes to ``pipes.log.info`` and the result to ``pipes.report_asset_materialization`` (data version = the
artifact id). Exit codes: 0 success, 2 bad input (config, pairs file, unknown artifact).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_assets.pipes_report import clean as _clean
from rlhf_assets.pipes_report import meta as _meta
from rlhf_assets.pipes_report import pipes as _pipes
from rlhf_assets.pipes_report import rank as _rank

DEFAULT_OUT = "runs/reward_model"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rm", description="Reward model: train (Lightning) and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="Train a Bradley–Terry reward model and store it as an artifact.")
    t.add_argument("--config", help="RMConfig as JSON or YAML; flags below override it.")
    t.add_argument("--preset", choices=["tiny", "tiny-decoder", "small", "hf"])
    t.add_argument("--model-path", help="Local Hugging Face checkpoint (preset hf).")
    t.add_argument("--pairs", required=True, help="Training pairs JSONL: prompt, chosen, rejected[, target, weight].")
    t.add_argument("--val-pairs", help="Validation pairs JSONL (default: a seeded 10%% hold-out of --pairs).")
    t.add_argument("--out", default=DEFAULT_OUT, help="Work directory: checkpoints, logs; rerun to resume.")
    t.add_argument("--store", help="Storage root for the artifact (default $RLHF_STORAGE_ROOT or ./.rlhf).")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--devices", type=int)
    t.add_argument("--strategy", choices=["auto", "ddp", "fsdp"])
    t.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    t.add_argument("--precision")
    t.add_argument("--seed", type=int)
    t.add_argument("--batch-size", type=int, help="Pairs per device per step.")
    t.add_argument("--max-length", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--checkpoint-every", type=int, dest="checkpoint_every_n_steps",
                   help="Also write last.ckpt every N optimizer steps.")
    t.add_argument("--dataset-id", help="Id of the preference_dataset snapshot (recorded in the manifest).")
    t.add_argument("--parent", action="append", default=[], dest="parents", help="Parent artifact id (repeatable).")
    t.add_argument("--no-progress", action="store_true", help="No progress bar even on a terminal.")
    t.add_argument("--artifact-kind", default="reward_model", choices=["reward_model", "judge_reward_model"],
                   help="The artifact's role in the store (judge_reward_model: a release's independent judge).")

    e = sub.add_parser("eval", help="Evaluate a stored reward model on preference pairs.")
    e.add_argument("--model", required=True, help="Artifact id (or unique prefix), artifact directory, or 'latest'.")
    e.add_argument("--pairs", required=True)
    e.add_argument("--store", help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--seed", type=int, default=0, help="Seed of the pair orientation used for AUC/ECE.")
    e.add_argument("--json", action="store_true", dest="as_json")
    return parser


def _split_holdout(pairs_path: Path, out_dir: Path, seed: int) -> tuple[Path, Path]:
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return train_p, val_p


def _train(args: argparse.Namespace) -> int:
    from rlhf_assets.reward.config import RMConfig

    config = RMConfig.from_file(args.config) if args.config else RMConfig()
    config = config.with_overrides(
        preset=args.preset, model_path=args.model_path, epochs=args.epochs, max_steps=args.max_steps,
        devices=args.devices, strategy=args.strategy, accelerator=args.accelerator, precision=args.precision,
        seed=args.seed, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
        checkpoint_every_n_steps=args.checkpoint_every_n_steps)
    out = Path(args.out)
    pairs = Path(args.pairs)
    if args.val_pairs:
        train_path, val_path = pairs, Path(args.val_pairs)
    else:
        if not pairs.is_file():
            raise ValueError(f"pairs file {pairs} does not exist")
        train_path, val_path = _split_holdout(pairs, out, config.seed)

    from rlhf_assets.reward.train import train_reward_model

    with _pipes() as pipes:
        def log(msg: str) -> None:
            print(f"[rm train] {msg}", file=sys.stderr, flush=True)
            if pipes is not None:
                pipes.log.info(msg)

        result = train_reward_model(config, train_path, val_path, out, store_root=args.store,
                                    dataset_id=args.dataset_id, parent_ids=tuple(args.parents),
                                    progress=not args.no_progress, log=log if _rank() == 0 else None,
                                    artifact_kind=args.artifact_kind)
        if result is None:  # not rank 0
            return 0
        if pipes is not None:
            metadata: dict[str, Any] = {
                "artifact_id": result.artifact_id, "artifact_uri": result.artifact_uri,
                "dataset_id": result.dataset_id or "", "n_truncated": result.n_truncated,
                "global_step": result.global_step, "epochs_completed": result.epochs_completed,
                "selected_checkpoint": result.selected_checkpoint, "tokens_per_s": float(result.tokens_per_s),
                "wall_time_s": float(result.wall_time_s),
                "resumed_from_step": result.resumed_from_step if result.resumed_from_step is not None else -1,
                "truncation": result.truncation,
            }
            metadata.update({k: float(v) for k, v in result.metrics.items()})
            pipes.report_asset_materialization(metadata={k: _meta(v) for k, v in metadata.items()},
                                               data_version=result.artifact_id)
    summary = {"artifact_id": result.artifact_id, "artifact_uri": result.artifact_uri,
               "metrics": result.metrics, "n_truncated": result.n_truncated, "global_step": result.global_step,
               "resumed_from_step": result.resumed_from_step, "tokens_per_s": round(result.tokens_per_s, 1),
               "wall_time_s": result.wall_time_s}
    print(json.dumps(_clean(summary), sort_keys=True), flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.reward.artifact import load_reward_model
    from rlhf_assets.reward.evaluate import evaluate_pairs
    from rlhf_assets.storage import storage_from_env

    store = ArtifactStore(storage_from_env(args.store))
    artifact_dir = store.resolve(args.model, kind="reward_model")
    scorer = load_reward_model(artifact_dir)
    result = evaluate_pairs(scorer, args.pairs, batch_size=args.batch_size, seed=args.seed)
    if args.as_json:
        print(json.dumps(_clean(result)), flush=True)
    else:
        print(f"model:    {artifact_dir}")
        for key in ("n", "accuracy", "auc", "ece", "log_loss"):
            value = result[key]
            print(f"{key + ':':<9} {value if isinstance(value, int) else f'{value:.4f}'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    from rlhf_assets.registry.artifacts import ArtifactNotFound

    try:
        return _train(args) if args.command == "train" else _eval(args)
    except (ValueError, ArtifactNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
