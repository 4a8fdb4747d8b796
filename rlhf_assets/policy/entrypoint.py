"""``policy sft`` / ``policy ppo``: the policy process entry point (also the Dagster Pipes external process).

    python -m rlhf_assets.policy.entrypoint sft --config sft.json --data sft.jsonl --out runs/sft
    python -m rlhf_assets.policy.entrypoint ppo --config ppo.json --sft ID|DIR --reward-model ID|DIR \\
        [--calibration calibration.json] --prompts prompts.jsonl --eval-prompts heldout.jsonl --out runs/ppo

Data files are JSONL: SFT rows ``{"prompt", "response"}``, prompt rows ``{"prompt"}``. ``--sft`` and
``--reward-model`` take an artifact id (or unique prefix), an artifact directory, or ``latest``. ``--calibration``
is rm_calibration's JSON record (or a bare calibrator dict); without it the raw reward-model score is used.
Rerunning the same command with the same ``--out`` resumes from its last checkpoint. Each command prints one JSON
summary line at the end; under Dagster Pipes (rank 0) progress goes to the run's logs and the result, metrics and
plots to the materialization. Exit codes: 0 success, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf_assets.pipes_report import clean, meta, png_markdown, rank
from rlhf_assets.pipes_report import pipes as open_pipes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policy", description="Policy: SFT start point and PPO.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("sft", "Fine-tune the base policy on chosen responses."),
                       ("ppo", "PPO against the calibrated reward model under a KL penalty.")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help=f"{name.upper()} config as JSON or YAML; flags below override it.")
        p.add_argument("--out", required=True, help="Work directory: checkpoints, metrics; rerun to resume.")
        p.add_argument("--store", help="Storage root for the artifact (default $RLHF_STORAGE_ROOT or ./.rlhf).")
        p.add_argument("--seed", type=int)
        p.add_argument("--dataset-id", help="preference_dataset id (recorded in the manifest).")
        p.add_argument("--parent", action="append", default=[], dest="parents", help="Parent artifact id.")
    s = sub.choices["sft"]
    s.add_argument("--data", required=True, help="SFT rows JSONL: prompt, response.")
    s.add_argument("--val-data", help="Held-out SFT rows JSONL (reported as val_nll).")
    s.add_argument("--preset", choices=["tiny", "small", "hf"])
    s.add_argument("--model-path")
    s.add_argument("--epochs", type=int)
    s.add_argument("--max-steps", type=int)
    p = sub.choices["ppo"]
    p.add_argument("--sft", required=True, help="SFT policy: artifact id, directory or 'latest'.")
    p.add_argument("--reward-model", required=True, help="Reward model: artifact id, directory or 'latest'.")
    p.add_argument("--calibration", help="rm_calibration record (JSON) or a calibrator dict.")
    p.add_argument("--prompts", required=True, help="Training prompts JSONL: prompt.")
    p.add_argument("--eval-prompts", required=True, help="Held-out prompts JSONL: prompt.")
    p.add_argument("--sft-data", help="SFT rows JSONL mixed into PPO (sft_mix_share).")
    p.add_argument("--steps", type=int)
    return parser


def _log_to(pipes: Any, tag: str):
    def log(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)
        if pipes is not None:
            pipes.log.info(msg)
    return log if rank() == 0 else None


def _report(pipes: Any, metadata: dict, data_version: str) -> None:
    if pipes is not None:
        pipes.report_asset_materialization(metadata={k: meta(v) for k, v in metadata.items()},
                                           data_version=data_version)


def _sft(args: argparse.Namespace) -> int:
    from rlhf_assets.policy.config import SFTConfig
    from rlhf_assets.policy.data import read_jsonl
    from rlhf_assets.policy.sft import train_sft

    config = SFTConfig.from_file(args.config) if args.config else SFTConfig()
    config = config.with_overrides(preset=args.preset, model_path=args.model_path, epochs=args.epochs,
                                   max_steps=args.max_steps, seed=args.seed)
    rows = read_jsonl(args.data, ("prompt", "response"))
    val = read_jsonl(args.val_data, ("prompt", "response")) if args.val_data else []
    with open_pipes() as pipes:
        r = train_sft(config, rows, args.out, val_rows=val, store_root=args.store, dataset_id=args.dataset_id,
                      log=_log_to(pipes, "policy sft"))
        _report(pipes, {"artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "global_step": r.global_step,
                        "tokens_per_s": float(r.tokens_per_s), "wall_time_s": float(r.wall_time_s),
                        "resumed_from_step": -1 if r.resumed_from_step is None else r.resumed_from_step,
                        **{k: float(v) for k, v in r.metrics.items()}}, r.artifact_id)
    print(json.dumps(clean({"artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "metrics": r.metrics,
                            "global_step": r.global_step, "resumed_from_step": r.resumed_from_step,
                            "tokens_per_s": round(r.tokens_per_s, 1)}), sort_keys=True), flush=True)
    return 0


def _calibrator(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read calibration {path}: {exc}") from None
    return doc.get("calibrator", doc) if isinstance(doc, dict) else None


def _ppo(args: argparse.Namespace) -> int:
    from rlhf_assets.policy.config import PPOConfig
    from rlhf_assets.policy.data import read_jsonl
    from rlhf_assets.policy.plots import kl_and_beta_png, length_png, reward_vs_sqrt_kl_png
    from rlhf_assets.policy.ppo import train_ppo
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.storage import storage_from_env

    config = PPOConfig.from_file(args.config) if args.config else PPOConfig()
    config = config.with_overrides(steps=args.steps, seed=args.seed)
    store = ArtifactStore(storage_from_env(args.store))
    sft_dir = store.resolve(args.sft, kind="sft_policy")
    rm_dir = store.resolve(args.reward_model, kind="reward_model")
    prompts = [r["prompt"] for r in read_jsonl(args.prompts, ("prompt",))]
    eval_prompts = [r["prompt"] for r in read_jsonl(args.eval_prompts, ("prompt",))]
    sft_rows = read_jsonl(args.sft_data, ("prompt", "response")) if args.sft_data else []
    parents = list(args.parents) or [Path(sft_dir).name, Path(rm_dir).name]
    with open_pipes() as pipes:
        r = train_ppo(config, sft_dir, rm_dir, prompts, eval_prompts, args.out, calibrator=_calibrator(args.calibration),
                      sft_rows=sft_rows, store_root=args.store, dataset_id=args.dataset_id, parent_ids=parents,
                      log=_log_to(pipes, "policy ppo"))
        if pipes is not None:
            cfg = config.resolved()
            last = r.history[-1] if r.history else {}
            _report(pipes, {
                "artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri, "selected_step": r.selected_step,
                "selected_proxy_reward": r.selected["proxy_reward"], "selected_kl": r.selected["kl"],
                "stop_reason": r.stop_reason or "", "events": r.events, "steps_run": len(r.history),
                "rollout_tokens_per_s": float(r.rollout_tokens_per_s),
                "train_tokens_per_s": float(r.train_tokens_per_s),
                "resumed_from_step": -1 if r.resumed_from_step is None else r.resumed_from_step,
                **{f"last_{k}": float(v) for k, v in last.items() if isinstance(v, (int, float))},
                "history": r.history, "evals": r.evals,
                "reward_vs_sqrt_kl": {"raw_value": png_markdown(reward_vs_sqrt_kl_png(
                    r.evals, r.selected_step, cfg.kl_budget), "reward vs sqrt KL"), "type": "md"},
                "kl_and_beta": {"raw_value": png_markdown(kl_and_beta_png(r.history, cfg.kl_target),
                                                          "KL and beta"), "type": "md"},
                "response_length": {"raw_value": png_markdown(length_png(r.history), "response length"),
                                    "type": "md"},
            }, r.artifact_id)
    print(json.dumps(clean({"artifact_id": r.artifact_id, "artifact_uri": r.artifact_uri,
                            "selected_step": r.selected_step, "selected": r.selected, "stop_reason": r.stop_reason,
                            "steps_run": len(r.history), "resumed_from_step": r.resumed_from_step,
                            "events": r.events, "rollout_tokens_per_s": round(r.rollout_tokens_per_s, 1),
                            "train_tokens_per_s": round(r.train_tokens_per_s, 1)}), sort_keys=True), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    from rlhf_assets.registry.artifacts import ArtifactNotFound

    try:
        return _sft(args) if args.command == "sft" else _ppo(args)
    except (ValueError, ArtifactNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
