"""`rlhf demo`: lay the bundled sample data into the landing zone and materialize the graph on the embedded
local instance (SQLite under DAGSTER_HOME, storage root ./.rlhf), then print what happened."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from rlhf_assets.preference.sample_data import load_hh_pairs, load_squality_comparisons
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.storage import Storage

DEMO_DAYS = ("2025-06-01", "2025-06-02", "2025-06-03")


@dataclass
class LaidData:
    days: list[str]
    files: list[str]
    records: int
    truth: dict[str, str] = field(default_factory=dict)  # simulated pairs: pair_id -> canonical label
    bad_rows: int = 0


def lay_sample_data(storage: Storage, *, days=DEMO_DAYS, n_pairs: int | None = None, labels_per_pair: int = 5,
                    bad_row_rate: float = 0.01, seed: int = 0) -> LaidData:
    """Simulated panel judgements of the bundled HH-RLHF pairs plus the real SQuALITY judgements, spread over
    ``days``, written as landing files (JSONL for the panel, JSONL.gz for SQuALITY)."""
    days = list(days)
    batch = simulate_comparisons(load_hh_pairs(limit=n_pairs), dates=days, labels_per_pair=labels_per_pair,
                                 seed=seed, bad_row_rate=bad_row_rate, batch_id="hh-panel")
    written = []
    for day, (name, data) in landing_files(batch, fmt="jsonl").items():
        path = storage.landing_dir(day).joinpath(name)
        storage.write_bytes(path, data)
        written.append(str(path))
    squality = load_squality_comparisons()
    for day, rows in _spread_squality(squality, days).items():
        path = storage.landing_dir(day).joinpath("squality.jsonl")
        storage.write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        written.append(str(path))
    return LaidData(days=days, files=written, records=len(batch.records) + len(squality), truth=batch.truth,
                    bad_rows=batch.n_bad)


def _spread_squality(records: list[dict], days: list[str]) -> dict[str, list[dict]]:
    """All judgements of one question (one prompt) go to one day, round robin; timestamps inside the day."""
    questions = sorted({r["prompt"] for r in records})
    day_of = {q: days[i % len(days)] for i, q in enumerate(questions)}
    out: dict[str, list[dict]] = {}
    for i, r in enumerate(records):
        day = day_of[r["prompt"]]
        second = (i * 37) % 86_400
        stamp = f"{day}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
        out.setdefault(day, []).append(r | {"created_at": stamp})
    return out


DEMO_RELEASE = "r20250603-2359"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_demo(storage_root: str | None = None, dagster_home: str | None = None, *, n_pairs: int | None = None,
             reward_preset: str | None = "tiny", loop: bool = True, progress=print) -> dict[str, Any]:
    """The data pillar for every demo day, then (unless ``reward_preset`` is None) the whole release chain for one
    release: ``small`` trains the real pretrained MiniLM reward model (minutes on a laptop CPU), ``tiny`` a
    random-init one; the policies use the tiny preset. Then, with ``loop``, the loop runs by itself
    (rlhf_assets/demo_loop.py): the service, traffic and audits, the sensors, a drift retrain and a rollback."""
    import dagster as dg

    from rlhf_assets.defs.resources import AUTOMATION_CONFIG_ENV, RELEASE_THRESHOLDS_ENV
    from rlhf_assets.demo_loop import EXTRA_DAY, land_annotations, run_loop, write_automation_config
    from rlhf_assets.evaluation.thresholds import ReleaseThresholds
    from rlhf_assets.instance import PARTITIONS_END_ENV, PARTITIONS_START_ENV, ensure_dagster_home, write_ui_env
    from rlhf_assets.storage import ROOT_ENV, storage_from_env

    home = ensure_dagster_home(dagster_home)
    if storage_root:
        os.environ[ROOT_ENV] = storage_root
    storage = storage_from_env()
    os.environ.setdefault(ROOT_ENV, storage.uri)
    # The daily partitions are exactly the demo's days (before the definitions load), so the UI shows them filled;
    # saved beside the instance for `make ui` and printed in the summary.
    os.environ.setdefault(PARTITIONS_START_ENV, min(DEMO_DAYS))
    last_day = max((*DEMO_DAYS, EXTRA_DAY) if loop else DEMO_DAYS)  # the loop lands one more day of annotations
    os.environ.setdefault(PARTITIONS_END_ENV, (date.fromisoformat(last_day) + timedelta(days=1)).isoformat())
    # the sensors' thresholds for the demo's tiny models and volumes (a file the definitions read; printed below)
    os.environ.setdefault(AUTOMATION_CONFIG_ENV, str(write_automation_config(home)))
    env_names = [ROOT_ENV, PARTITIONS_START_ENV, PARTITIONS_END_ENV, AUTOMATION_CONFIG_ENV]
    if reward_preset == "tiny":  # also read by the retrains the sensors launch (they take no run config)
        path = home / "release_thresholds.json"
        path.write_text(json.dumps(TINY_DEMO_THRESHOLDS, indent=2))
        os.environ.setdefault(RELEASE_THRESHOLDS_ENV, str(path))
        env_names.append(RELEASE_THRESHOLDS_ENV)
        progress(f"release thresholds for the tiny preset: {TINY_DEMO_THRESHOLDS} (production default "
                 f"{ {k: getattr(ReleaseThresholds(), k) for k in TINY_DEMO_THRESHOLDS} }; {path}) — a random-init "
                 "reward model cannot meet the default style-flip limit; every other threshold is the production one")
    ui_env = {k: os.environ[k] for k in env_names}
    write_ui_env(home, ui_env)
    laid = lay_sample_data(storage, n_pairs=n_pairs)
    progress(f"laid {laid.records} comparison records into {storage.uri}/landing over {len(laid.days)} days")

    from rlhf_assets.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def("data_pillar")
    instance = dg.DagsterInstance.get()
    summary: dict[str, Any] = {"storage_root": storage.uri, "dagster_home": str(home), "days": {}, "ui_env": ui_env}
    for day in laid.days:
        progress(f"materializing the data pillar for {day} …")
        result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False, run_config=QUIET)
        summary["days"][day] = _day_summary(result, storage, day, laid.truth)
        progress("  " + json.dumps(summary["days"][day]))
    summary["success"] = all(d["run_success"] for d in summary["days"].values())
    if reward_preset and summary["success"]:
        summary["release"] = _run_release(definitions, instance, storage, reward_preset, progress)
        # A release stopped by a failed gate is the gate doing its job, not a broken demo.
        release = summary["release"]
        summary["success"] = release["run_success"] or (release["blocked_by_checks"] and "artifact_id" in release)
        if loop and release.get("verdict") in ("canary", "promote"):
            ops = demo_ops(reward_preset)
            progress("the loop, by itself: the service, traffic, audits and the sensors "
                     f"(thresholds: {os.environ[AUTOMATION_CONFIG_ENV]}) …")
            summary["loop"] = run_loop(definitions, instance, storage, QUIET | {"ops": ops},
                                       lambda day: land_annotations(storage, day), progress)
        elif loop:
            # the loop needs a release the service can serve: a rejected or escalated release 1 stops the demo here
            summary["loop_skipped"] = (f"release 1's verdict is {release.get('verdict') or 'missing'}: the loop "
                                       "needs a release in canary or production to serve")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``rlhf demo`` prints after :func:`run_demo`: rows in and quarantined, labels, checks, and for a
    release its reward model, policies, off-policy evaluation, gates and decision; then where to look."""
    lines: list[str] = []
    days = summary["days"].values()
    kappas = [d["fleiss_kappa"] for d in days if d.get("fleiss_kappa") is not None]
    accs = [d["accuracy_vs_simulator_truth"] for d in days if "accuracy_vs_simulator_truth" in d]
    lines.append("")
    lines.append(f"rows in:            {sum(d['rows_in'] or 0 for d in days)}")
    lines.append(f"rows quarantined:   {sum(d['rows_quarantined'] or 0 for d in days)}  "
                 f"(reasons: {summary['storage_root']}/quarantine/)")
    lines.append(f"labels aggregated:  {sum(d['pairs_aggregated'] or 0 for d in days)} pairs (Dawid–Skene)")
    if accs:
        lines.append(f"label accuracy:     {min(accs):.3f}–{max(accs):.3f} vs the simulator's truth")
    if kappas:
        lines.append(f"Fleiss' kappa:      {min(kappas):.3f}–{max(kappas):.3f} per day")
    lines.append(f"asset checks:       {sum(d['checks_passed'] for d in days)} passed, "
                 f"{sum(len(d['checks_failed']) for d in days)} failed")
    release = summary.get("release")
    if release:
        passed = [name for name, ok in release["checks"].items() if ok]
        failed = [name for name, ok in release["checks"].items() if not ok]
        lines.append(f"release:            {release['release']}: {release.get('pairs')} pairs "
                     f"{release.get('splits')}, dataset {release.get('dataset_id')}…")
        lines.append(f"reward model:       artifact {release.get('artifact_id')}…, test accuracy "
                     f"{_fmt(release.get('test_accuracy'))}, AUC {_fmt(release.get('test_auc'))}, ECE "
                     f"{_fmt(release.get('ece_before'))} → {_fmt(release.get('ece_after'))} "
                     f"({release.get('method')})")
        lines.append(f"release checks:     passed {', '.join(passed) or '-'}; failed {', '.join(failed) or '-'}"
                     + ("  (blocking: the release is not deployed — the decision below rejects it, or a failed "
                        "Dagster-blocking check stopped the run before it)" if failed else ""))
        if release.get("ppo_policy"):
            lines.append(f"policy:             SFT {release.get('sft_policy')}… → PPO "
                         f"{release.get('ppo_policy')}…, kept step {release.get('ppo_selected_step')} (held-out "
                         f"proxy reward {_fmt(release.get('ppo_selected_proxy_reward'))}, KL "
                         f"{_fmt(release.get('ppo_selected_kl'))})")
        if release.get("verdict"):
            lines.append(f"off-policy eval:    judge uplift {_fmt(release.get('ope_judge_uplift'))} "
                         f"[{_fmt(release.get('ope_judge_uplift_ci_low'))}, "
                         f"{_fmt(release.get('ope_judge_uplift_ci_high'))}] (gates); proxy uplift "
                         f"{_fmt(release.get('ope_proxy_uplift'))} [{_fmt(release.get('ope_proxy_uplift_ci_low'))}, "
                         f"{_fmt(release.get('ope_proxy_uplift_ci_high'))}] (reported); ESS share "
                         f"{_fmt(release.get('ope_ess_share'))}, k̂ {_fmt(release.get('ope_pareto_k'))}, "
                         f"reliable {release.get('ope_reliable')}")
            lines.append("gates:              gate, value, interval, threshold, outcome")
            for name, g in (release.get("gates") or {}).items():
                value = (f"{sum(v.endswith(': passed') for v in g['value'])}/{len(g['value'])} passed"
                         if isinstance(g["value"], list) else _fmt(g["value"]))
                interval = f"[{_fmt(g['ci_low'])}, {_fmt(g['ci_high'])}]" if g.get("ci_low") is not None else "-"
                lines.append(f"  {name:<21} {value:<10} {interval:<17} {_fmt(g['threshold']):<7} {g['outcome']}")
            aliases = release.get("aliases", {})
            lines.append(f"decision:           {release['verdict']}; production → "
                         f"{aliases.get('production') or '-'}, canary → {aliases.get('canary') or '-'}   "
                         f"(rlhf release list)")
    if summary.get("loop_skipped"):
        lines.append(f"the loop:           not run — {summary['loop_skipped']}")
    if summary.get("loop"):
        from rlhf_assets.demo_loop import history_lines

        lines.append("the loop:")
        lines.extend(f"  {line}" for line in summary["loop"]["story"])
        lines.extend(history_lines(summary["loop"]))
    lines.append(f"tables:             {summary['storage_root']}/tables/")
    lines.append(f"Dagster instance:   {summary['dagster_home']}")
    env = summary.get("ui_env") or {"RLHF_STORAGE_ROOT": summary["storage_root"]}
    lines.append(f"open the UI:        DAGSTER_HOME={summary['dagster_home']} "
                 + " ".join(f"{k}={v}" for k, v in env.items()) + " dagster dev   (then http://127.0.0.1:3000)")
    return lines


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


#: The demo's tiny preset trains fewer steps (the release gates act on bootstrap intervals, so a small test split
#: gives "inconclusive" → canary rather than a coin-toss reject). Both tiny reward models prefer short refusals on HH
#: harmless, and PPO against them answered in 1–5 tokens (the adversarial_eval gate rejects that as length drift):
#: the demo turns on the mitigations — length-balanced reward-model training, the length-debiased PPO reward and the
#: SFT mix (PPO-ptx) — so its policy is a healthy one (README, "Reward hacking").
TINY_DEMO_OPS = {"sft_policy": {"config": {"epochs": 1}},
                 "reward_model": {"config": {"length_balance": True}},
                 "ppo_policy": {"config": {"steps": 20, "eval_every": 5, "length_debias": True,
                                           "sft_mix_share": 0.25}}}

#: The one production threshold the tiny preset cannot meet: a random-init 2-layer reward model trained on 1.5k HH
#: harmless pairs (test accuracy about 0.6) still lets half-truncated rejected answers overtake about 20% of the pairs
#: it orders correctly (the pretrained MiniLM of the small preset about 29%), against the production limit of 10%.
#: The demo relaxes that limit alone, through the same file a deployment uses ($RLHF_RELEASE_THRESHOLDS), and says
#: so; every other threshold keeps its production value, and the tests show the default rejecting a hacked release.
TINY_DEMO_THRESHOLDS = {"max_style_flip_rate": 0.30}


def demo_ops(preset: str) -> dict[str, Any]:
    """The release chain's op config in the demo: both reward models in ``preset``, plus TINY_DEMO_OPS for tiny."""
    ops: dict[str, Any] = {name: {"config": {"preset": preset}} for name in ("reward_model", "judge_reward_model")}
    for name, op in (TINY_DEMO_OPS if preset == "tiny" else {}).items():
        ops[name] = {"config": {**ops.get(name, {}).get("config", {}), **op["config"]}}
    return ops


def _run_release(definitions, instance, storage: Storage, preset: str, progress) -> dict[str, Any]:
    import dagster as dg

    from rlhf_assets.registry.decisions import read_decision
    from rlhf_assets.registry.listing import release_listing
    from rlhf_assets.registry.releases import create_release

    release = create_release(storage, key=DEMO_RELEASE, note="rlhf demo")
    instance.add_dynamic_partitions("release", [release.key])
    progress(f"materializing release {release.key}: dataset → reward model → calibration → SFT → PPO → OPE → "
             f"decision → production alias (preset {preset}; training runs in its own processes through Dagster "
             "Pipes) …")
    ops = demo_ops(preset)
    result = definitions.resolve_job_def("release_chain").execute_in_process(
        partition_key=release.key, instance=instance, raise_on_error=False, run_config=QUIET | {"ops": ops})
    out: dict[str, Any] = {"release": release.key, "run_id": result.run_id, "run_success": result.success}
    # the blocking (ERROR) checks; release_approved (WARN) restates the verdict, printed on its own line
    checks = [c for c in result.get_asset_check_evaluations() if c.severity == dg.AssetCheckSeverity.ERROR]
    out["checks"] = {c.check_name: c.passed for c in checks}
    out["blocked_by_checks"] = not all(out["checks"].values())
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        values = {k: v.value for k, v in m.metadata.items()}
        name = m.asset_key.to_user_string()
        if name == "preference_dataset":
            out.update(dataset_id=values["dataset_id"][:16], pairs=values["pairs"], splits=values["splits"])
        elif name == "reward_model":
            out.update(artifact_id=str(values.get("artifact_id", ""))[:16],
                       val_accuracy=values.get("val_accuracy"), tokens_per_s=values.get("tokens_per_s"))
        elif name == "rm_calibration":
            out.update({k: values.get(k) for k in ("method", "test_accuracy", "test_auc", "ece_before", "ece_after")})
        elif name == "sft_policy":
            out.update(sft_policy=str(values.get("artifact_id", ""))[:16], sft_val_nll=values.get("val_nll"))
        elif name == "ppo_policy":
            out.update(ppo_policy=str(values.get("artifact_id", ""))[:16], ppo_selected_step=values.get("selected_step"),
                       ppo_selected_kl=values.get("selected_kl"),
                       ppo_selected_proxy_reward=values.get("selected_proxy_reward"))
        elif name == "ope_report":
            out.update({f"ope_{k}": values.get(k) for k in (
                "judge_uplift", "judge_uplift_ci_low", "judge_uplift_ci_high", "proxy_uplift", "proxy_uplift_ci_low",
                "proxy_uplift_ci_high", "ess_share", "pareto_k", "reliable")})
        elif name == "deployment_decision":
            out.update(verdict=values.get("verdict"))
    decision = read_decision(storage, release.key)
    if decision:
        out["reasons"] = decision.get("reasons")
        out["gates"] = {g["name"]: {k: g.get(k) for k in ("value", "ci_low", "ci_high", "threshold", "outcome")}
                        for g in decision.get("gates", [])}
    out["aliases"] = release_listing(storage)["aliases"]
    progress("  " + json.dumps({k: v for k, v in out.items() if k != "gates"}, default=str))
    return out


def _day_summary(result, storage: Storage, day: str, truth: dict[str, str]) -> dict[str, Any]:
    import polars as pl

    out: dict[str, Any] = {"run_id": result.run_id, "run_success": result.success}
    checks = result.get_asset_check_evaluations()
    out["checks_passed"] = sum(c.passed for c in checks)
    out["checks_failed"] = [c.check_name for c in checks if not c.passed]
    meta = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        meta[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    validated = meta.get("validated_pairs", {})
    labels = meta.get("aggregated_labels", {})
    out.update(rows_in=validated.get("rows_in"), rows_quarantined=validated.get("rows_quarantined"),
               pairs_aggregated=labels.get("pairs"), fleiss_kappa=labels.get("fleiss_kappa"),
               mean_cohen_kappa=labels.get("mean_cohen_kappa"))
    path = storage.table_path("aggregated_labels", day)
    if truth and storage.exists(path):
        table = storage.read_parquet(path).filter(pl.col("pair_id").is_in(list(truth)))
        if table.height:
            hits = sum(truth[p] == lab for p, lab in zip(table["pair_id"], table["label"]))
            out["accuracy_vs_simulator_truth"] = round(hits / table.height, 4)
    return out
