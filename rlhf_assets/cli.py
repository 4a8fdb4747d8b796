"""The `rlhf` command. Each subcommand is a thin shell over the domain code; failures say what and where."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="rlhf_assets: the RLHF loop as Dagster assets.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
bench_app = typer.Typer(help="Benchmarks against peers, on this machine, in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
rm_app = typer.Typer(help="Reward model: train (its own process; DDP-capable) and evaluate.", no_args_is_help=True)
app.add_typer(rm_app, name="rm")
policy_app = typer.Typer(help="Policy: SFT start point and PPO (each its own process; resumable).",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")
release_app = typer.Typer(help="Releases: the partitions everything trained is keyed by.", no_args_is_help=True)
app.add_typer(release_app, name="release")
drift_app = typer.Typer(help="Drift of the served scores and prompts against a release's reference.",
                        no_args_is_help=True)
app.add_typer(drift_app, name="drift")

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def demo(
    root: Annotated[str | None, typer.Option(help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")] = None,
    dagster_home: Annotated[str | None, typer.Option(help="Default $DAGSTER_HOME or ./.dagster.")] = None,
    pairs: Annotated[int | None, typer.Option(help="Use only the first N bundled HH-RLHF pairs.")] = None,
    reward_preset: Annotated[str, typer.Option(help="tiny (random-init, ~2 min), small (the pretrained MiniLM; "
                                                    "~15 min on 2 cores), or none to stop after the data pillar.")]
    = "tiny",
    loop: Annotated[bool, typer.Option(help="After release 1: the service, traffic, the sensors, a drift retrain "
                                            "and a rollback (--no-loop stops at release 1's decision).")] = True,
):
    """Lay the bundled sample data into the landing zone and materialize the graph on the local instance; then let
    the loop run by itself."""
    from rlhf_assets.demo import run_demo, summary_lines

    preset = None if reward_preset == "none" else reward_preset
    summary = run_demo(root, dagster_home, n_pairs=pairs, reward_preset=preset, loop=loop,
                       progress=lambda m: typer.echo(m, err=True))
    for line in summary_lines(summary):
        typer.echo(line)
    if not summary["success"]:
        _fail("some runs failed; see the run logs in the UI", 1)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="JSONL, JSONL.gz or Parquet comparison files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    quarantine_dir: Annotated[Path | None, typer.Option(help="Write rejected rows/files here.")] = None,
    day: Annotated[str | None, typer.Option(help="Also require created_at inside this UTC day.")] = None,
):
    """Run the validated_pairs expectation suite on files, outside Dagster.

    Exit code: 0 all rows valid, 1 some rows quarantined, 2 some file unreadable.
    """
    from rlhf_assets.preference.validate_files import validate_files

    if day is not None:
        try:
            from datetime import date

            date.fromisoformat(day)
        except ValueError:
            _fail(f"--day must be YYYY-MM-DD, got {day!r}")
    try:
        reports = validate_files(files, day=day, quarantine_dir=quarantine_dir)
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"files": reports}, indent=2))
    else:
        for r in reports:
            line = f"{r['status']:<12} {r['path']}: {r['rows_valid']}/{r['rows_in']} valid"
            typer.echo(line + (f" — {r['error']}" if r.get("error") else ""))
            for name, count in r["failures"].items():
                typer.echo(f"    {count:>6}  {name}")
    statuses = {r["status"] for r in reports}
    raise typer.Exit(2 if "unreadable" in statuses else 1 if "quarantined" in statuses else 0)


@app.command()
def aggregate(
    file: Annotated[Path, typer.Argument(help="CSV, TSV, Parquet (file or directory) or JSONL with item_id, "
                                              "annotator_id, label.")],
    method: Annotated[str, typer.Option(help="dawid-skene or majority.")] = "dawid-skene",
    out: Annotated[Path | None, typer.Option(help="Output file (CSV unless it ends in .parquet).")] = None,
    shrinkage: Annotated[float, typer.Option(help="Dawid–Skene confusion-matrix shrinkage (pseudo-counts).")] = 0.0,
    max_iter: Annotated[int, typer.Option(help="Dawid–Skene iteration cap.")] = 100,
    tol: Annotated[float, typer.Option(help="Dawid–Skene convergence tolerance.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Majority-vote tie-breaking seed.")] = 0,
    out_of_core: Annotated[bool | None, typer.Option(
        "--out-of-core/--in-memory", help="Force (or forbid) the out-of-core path; default: out of core for "
                                          "Parquet larger than AggregationSettings.out_of_core_bytes.")] = None,
    batch_rows: Annotated[int | None, typer.Option(help="Out of core: rows per batch and bucket "
                                                        "(default AggregationSettings.batch_rows).")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Out of core: scratch directory (default: the system's "
                                                       "temporary directory); about 3-4x the Parquet input.")] = None,
):
    """Aggregate crowd labels: one label per item with its confidence."""
    from rlhf_assets.preference.aggregate_file import AggregateInputError, aggregate_to

    if method not in ("dawid-skene", "majority"):
        _fail(f"--method must be dawid-skene or majority, got {method!r}")
    if batch_rows is not None and batch_rows < 1:
        _fail(f"--batch-rows must be >= 1, got {batch_rows}")
    try:
        summary, streamed = aggregate_to(file, out, method=method, out_of_core=out_of_core, batch_rows=batch_rows,
                                         work_dir=work_dir, shrinkage=shrinkage, max_iter=max_iter, tol=tol,
                                         seed=seed)
    except AggregateInputError as exc:
        _fail(str(exc))
    status = "converged" if summary.converged else "not converged"
    typer.echo(f"{summary.method}: {summary.n_items} items, {summary.n_annotators} annotators, "
               f"{summary.n_rows} labels, {summary.n_iter} iterations, {status}"
               + (", out of core" if streamed else "") + (f"; wrote {out}" if out else ""), err=True)


@bench_app.command("aggregation")
def bench_aggregation(
    rows: Annotated[int, typer.Option(help="Label rows of the synthetic crowd (Parquet, written in chunks), "
                                           "aggregated by ours out of core.")] = 5_000_000,
    peer_rows: Annotated[int, typer.Option(help="Its first rows for the head-to-head: crowd-kit and ours in "
                                                "memory, ours out of core (0: none).")] = 1_000_000,
    n_iter: Annotated[int, typer.Option(help="EM iterations for every method.")] = 20,
    batch_rows: Annotated[int, typer.Option(help="Out of core: rows per batch and bucket.")] = 1_000_000,
    work_dir: Annotated[str | None, typer.Option(help="Scratch directory (about 4x the crowd's Parquet).")] = None,
    quick: Annotated[bool, typer.Option(help="200k rows, for a smoke test.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Dawid–Skene: ours out of core on a crowd far larger than memory (wall time, peak RSS, accuracy); crowd-kit
    and ours in memory on a share of it."""
    module = _bench_module("aggregation")
    argv = ["--rows", str(rows), "--peer-rows", str(peer_rows), "--n-iter", str(n_iter), "--batch-rows",
            str(batch_rows)] + (["--work-dir", work_dir] if work_dir else [])
    module.cli(argv + (["--quick"] if quick else []) + (["--json"] if as_json else []))


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@rm_app.command("train", context_settings=_PASSTHROUGH, add_help_option=False)
def rm_train(ctx: typer.Context):
    """Train a Bradley–Terry reward model: --pairs FILE [--val-pairs FILE] [--preset tiny|small|hf] [--config FILE]
    [--out DIR] [--epochs N] [--devices N --strategy ddp] … (--help for all). Rerun the same command to resume."""
    from rlhf_assets.reward.entrypoint import main as entrypoint

    raise typer.Exit(entrypoint(["train", *ctx.args]))


@rm_app.command("eval", context_settings=_PASSTHROUGH, add_help_option=False)
def rm_eval(ctx: typer.Context):
    """Evaluate a reward model: --model ID|DIR|latest --pairs FILE [--json] (--help for all)."""
    from rlhf_assets.reward.entrypoint import main as entrypoint

    raise typer.Exit(entrypoint(["eval", *ctx.args]))


@app.command("serve", context_settings=_PASSTHROUGH, add_help_option=False)
def serve(ctx: typer.Context):
    """The reward-model HTTP service: [--host 127.0.0.1] [--port 8080] [--model ID|latest] [--backend torch|onnx]
    [--insecure-no-auth] … (--help for all). Needs $RLHF_SERVE_TOKEN unless --insecure-no-auth (loopback only)."""
    from rlhf_assets.serving.server import main as server

    raise typer.Exit(server(list(ctx.args)))


@app.command("serve-policy", context_settings=_PASSTHROUGH, add_help_option=False)
def serve_policy(ctx: typer.Context):
    """The registry's policy behind runtime guards: [--port 8090] [--kl-limit NATS] [--on-guard reference|refuse]
    [--filter-blocklist W …] [--filter-regexes RX …] [--classifier-url URL] … (--help for all). Needs
    $RLHF_SERVE_TOKEN unless --insecure-no-auth (loopback only)."""
    from rlhf_assets.policy_serving.server import main as server

    raise typer.Exit(server(list(ctx.args)))


@app.command("annotate", context_settings=_PASSTHROUGH, add_help_option=False)
def annotate(ctx: typer.Context):
    """The annotation app: [--host 127.0.0.1] [--port 8070] [--day YYYY-MM-DD] … (--help for all); `rlhf annotate
    roster add NAME [--expires-days N]` puts an annotator on the roster and prints their token once (roster list |
    deactivate NAME | activate NAME)."""
    from rlhf_assets.annotation.server import main as server

    raise typer.Exit(server(list(ctx.args)))


@policy_app.command("sft", context_settings=_PASSTHROUGH, add_help_option=False)
def policy_sft(ctx: typer.Context):
    """Fine-tune the base policy on chosen responses: --data FILE --out DIR [--config FILE] [--preset tiny|small|hf]
    [--val-data FILE] [--epochs N] … (--help for all). Rerun the same command to resume."""
    from rlhf_assets.policy.entrypoint import main as entrypoint

    raise typer.Exit(entrypoint(["sft", *ctx.args]))


@policy_app.command("ppo", context_settings=_PASSTHROUGH, add_help_option=False)
def policy_ppo(ctx: typer.Context):
    """PPO against the calibrated reward model: --sft ID|DIR --reward-model ID|DIR --prompts FILE
    --eval-prompts FILE --out DIR [--calibration FILE] [--config FILE] [--steps N] … (--help for all)."""
    from rlhf_assets.policy.entrypoint import main as entrypoint

    raise typer.Exit(entrypoint(["ppo", *ctx.args]))


@release_app.command("create")
def release_create(
    key: Annotated[str | None, typer.Option(help="Release key (default r<YYYYMMDD-HHMM>, UTC now).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Last annotation date included (default: the key's date).")]
    = None,
    note: Annotated[str, typer.Option(help="Why this release exists.")] = "",
    root: Annotated[str | None, typer.Option(help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")] = None,
):
    """Create a release: its record in the registry and its partition on the Dagster instance."""
    import dagster as dg

    from rlhf_assets.instance import ensure_dagster_home
    from rlhf_assets.registry.releases import create_release
    from rlhf_assets.storage import storage_from_env

    try:
        release = create_release(storage_from_env(root), key=key, cutoff=cutoff, note=note)
    except ValueError as exc:
        _fail(str(exc))
    ensure_dagster_home()
    dg.DagsterInstance.get().add_dynamic_partitions("release", [release.key])
    typer.echo(json.dumps({"release": release.key, "cutoff": release.cutoff}))


@release_app.command("list")
def release_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print {aliases, releases, history} as JSON.")] = False,
    root: Annotated[str | None, typer.Option(help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")] = None,
):
    """Releases with their verdicts, which release each alias points at, and the alias history."""
    from rlhf_assets.registry.listing import format_listing, release_listing
    from rlhf_assets.storage import storage_from_env

    listing = release_listing(storage_from_env(root))
    typer.echo(json.dumps(listing, indent=2) if as_json else format_listing(listing))


def _materialize_production_release(release: str, run_config: dict) -> None:
    """Run the production_release asset for one release partition on the Dagster instance (shows in the UI)."""
    import dagster as dg

    from rlhf_assets.definitions import defs
    from rlhf_assets.instance import ensure_dagster_home
    from rlhf_assets.registry.decisions import read_decision
    from rlhf_assets.storage import storage_from_env

    storage = storage_from_env(None)
    if read_decision(storage, release) is None:
        _fail(f"release {release} has no deployment decision yet: materialize its release chain first")
    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    if release not in instance.get_dynamic_partitions("release"):
        _fail(f"release {release} is not a partition on this Dagster instance ({os.environ.get('DAGSTER_HOME')})")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = defs().resolve_job_def("apply_release_decision").execute_in_process(
        partition_key=release, instance=instance, run_config=quiet | run_config, raise_on_error=False)
    if not result.success:
        failures = [e.step_failure_data.user_failure_data.description for e in result.all_events
                    if e.is_step_failure and e.step_failure_data.user_failure_data is not None]
        _fail(f"the apply_release_decision run {result.run_id} failed"
              + (f": {failures[0]}" if failures and failures[0] else "") + "; see it in the Dagster UI")
    out = result.output_for_node("production_release")
    typer.echo(json.dumps({"run_id": result.run_id, "action": out.action, "reason": out.reason,
                           "aliases": out.aliases}, indent=2))


@release_app.command("rollback")
def release_rollback(release: Annotated[str, typer.Argument(help="The older release to put back in production.")]):
    """Put production back to exactly the artifacts RELEASE last held in production (from the registry history,
    whether it got there by its own promotion, an override or a rollback): a production_release run in mode
    rollback on the Dagster instance, recorded in the history as `rollback`. Nothing retrains. A release that never
    held production exits 2 and names the releases that did. Prints the new aliases."""
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.registry.deployment import NeverInProduction, last_in_production, production_releases
    from rlhf_assets.storage import storage_from_env

    history = Registry(storage_from_env(None)).history()
    if last_in_production(history, release) is None:
        _fail(str(NeverInProduction(release, production_releases(history))))
    _materialize_production_release(release, {"ops": {"production_release": {"config": {"mode": "rollback"}}}})


@release_app.command("promote")
def release_promote(
    release: Annotated[str, typer.Argument(help="Release whose decision to apply.")],
    reason: Annotated[str | None, typer.Option(help="Override reason (needed for a reject/escalate verdict).")]
    = None,
    approver: Annotated[str | None, typer.Option(help="Who approves the override.")] = None,
):
    """Apply RELEASE's deployment decision through Dagster; with --reason and --approver a reject or escalate
    verdict is promoted anyway and both are recorded."""
    config = {k: v for k, v in (("override_reason", reason), ("approver", approver)) if v}
    _materialize_production_release(release, {"ops": {"production_release": {"config": config}}} if config else {})


@app.command()
def ope(
    target: Annotated[str, typer.Option(help="Target policy: artifact id, directory or 'latest' (a ppo_policy).")],
    reward_model: Annotated[str, typer.Option(help="Reward model: artifact id, directory or 'latest'.")],
    prompts: Annotated[Path, typer.Option(help="Held-out prompts JSONL ({\"prompt\"}) to simulate the log from.")],
    simulate: Annotated[bool, typer.Option("--simulate", help="Simulate the behaviour log (the only source here).")]
    = False,
    behavior: Annotated[str, typer.Option(help="Behaviour policy: 'production' (the alias; else --sft), an id or "
                                               "a directory.")] = "production",
    sft: Annotated[str | None, typer.Option(help="SFT policy used as behaviour when nothing is in production.")]
    = None,
    calibration: Annotated[Path | None, typer.Option(help="rm_calibration record or calibrator JSON.")] = None,
    judge_model: Annotated[str | None, typer.Option(
        help="Held-out judge reward model (a judge_reward_model artifact id or directory): the log is re-scored by "
             "it and its uplift is reported next to the proxy's. Without it the judge uplift — the one that "
             "gates a release — is not measured.")] = None,
    samples_per_prompt: int = 2,
    max_prompt_tokens: Annotated[int | None, typer.Option(help="Default: the target's training config.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: the target's training config.")] = None,
    log_out: Annotated[Path | None, typer.Option(help="Write the simulated log here (Parquet).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    root: Annotated[str | None, typer.Option(help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")] = None,
):
    """Off-policy estimate of a target policy's value and uplift from a behaviour policy's log: with the proxy
    (--reward-model, the one PPO optimised) and, given --judge-model, with the held-out judge, side by side. The
    same evaluation ope_report runs (rlhf_assets/evaluation/release_ope.py)."""
    from rlhf_assets.evaluation.release_ope import OPESettings, evaluate_release
    from rlhf_assets.jsonl_rows import read_jsonl
    from rlhf_assets.registry.artifacts import ArtifactNotFound
    from rlhf_assets.storage import storage_from_env

    if not simulate:
        _fail("only --simulate is supported from the command line; serving logs are read by the ope_report asset")
    try:
        calibrator = json.loads(calibration.read_text()).get("calibrator") if calibration else None
        rows = [r["prompt"] for r in read_jsonl(prompts, ("prompt",))]
        result = evaluate_release(
            storage_from_env(root), target=target, reward_model=reward_model, calibrator=calibrator, prompts=rows,
            judge=judge_model, sft=sft, behavior=None if behavior == "production" else behavior, simulate=True,
            max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
            settings=OPESettings(n_prompts=max(1, len(rows)), samples_per_prompt=samples_per_prompt))
    except (ValueError, ArtifactNotFound, OSError) as exc:
        _fail(str(exc))
    if log_out:
        result.log.write_parquet(log_out)
    typer.echo(json.dumps(result.report, indent=2) if as_json else result.markdown)


@app.command("simulate-traffic")
def simulate_traffic(
    drift: Annotated[str, typer.Option(help="none | score (terse responses) | prompt (another topic) | labels (the "
                                            "audits disagree with the model)")] = "none",
    rate: Annotated[float, typer.Option(help="Compared pairs per second (with --url).")] = 20.0,
    duration: Annotated[float, typer.Option(help="Seconds to send for (with --url).")] = 30.0,
    url: Annotated[str | None, typer.Option(help="A running `rlhf serve` (token from $RLHF_SERVE_TOKEN); without "
                                                 "it the pairs are scored here and the serving log written "
                                                 "directly.")] = None,
    items: Annotated[int, typer.Option(help="Pairs to score without --url.")] = 200,
    model: Annotated[str, typer.Option(help="Without --url: production | latest | an artifact id.")] = "production",
    audit_share: Annotated[float, typer.Option(help="Share of the pairs simulated annotators audit.")] = 0.2,
    seed: int = 0,
    root: Annotated[str | None, typer.Option(help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")] = None,
):
    """Drive the reward-model service (or the serving log directly) with compared pairs from the bundled data, and drop
    simulated human audits into landing/audits/: the inputs the drift and human–RM correlation sensors watch."""
    from rlhf_assets.serving.traffic import DRIFTS, Traffic, run_against_service, write_log_directly
    from rlhf_assets.storage import storage_from_env

    if drift not in DRIFTS:
        _fail(f"--drift must be one of {', '.join(DRIFTS)}; got {drift!r}")
    if not 0 <= audit_share <= 1 or rate <= 0 or duration <= 0 or items < 1:
        _fail("--audit-share must be in [0, 1]; --rate, --duration and --items must be positive")
    storage = storage_from_env(root)
    traffic = Traffic(drift=drift, seed=seed, audit_share=audit_share)
    if url:
        out = run_against_service(url, os.environ.get("RLHF_SERVE_TOKEN"), traffic, storage, rate=rate,
                                  duration_s=duration)
    else:
        from rlhf_assets.registry.aliases import Registry
        from rlhf_assets.registry.artifacts import ArtifactNotFound, ArtifactStore
        from rlhf_assets.serving.engine import ServedModel

        store, release = ArtifactStore(storage), None
        spec = model
        if model == "production":
            holder = Registry(storage).current("production")
            if not holder:
                _fail("nothing is in production: pass --model latest|ID, or promote a release first")
            spec, release = holder["artifacts"]["reward_model"], holder["release"]
        try:
            artifact_id = store.resolve_id(spec, kind="reward_model")
        except ArtifactNotFound as exc:
            _fail(str(exc))
        out = write_log_directly(storage, ServedModel(store.get(artifact_id), artifact_id), traffic, items=items,
                                 release=release)
    typer.echo(json.dumps(out))


@bench_app.command("reward")
def bench_reward(
    quick: Annotated[bool, typer.Option(help="A few pairs at max length 64, for a smoke test.")] = False,
    skip_trl: Annotated[bool, typer.Option(help="Ours only.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
):
    """Reward model: ours (MiniLM, Lightning) vs TRL's RewardTrainer, same data, batch, length and lr."""
    module = _bench_module("reward")
    module.cli((["--quick"] if quick else []) + (["--skip-trl"] if skip_trl else []) + (["--json"] if as_json else []))


@bench_app.command("serving", context_settings=_PASSTHROUGH, add_help_option=False)
def bench_serving(ctx: typer.Context):
    """Reward-model serving: ours vs a naive FastAPI service, LitServe and Ray Serve, tiny and small presets, at
    concurrency 1/8/32/64; items/s, p50/p99, batch size, share of the fp32 peak; an overload run. [--quick] [--json]"""
    _bench_module("serving").cli(list(ctx.args))


@bench_app.command("drift", context_settings=_PASSTHROUGH, add_help_option=False)
def bench_drift(ctx: typer.Context):
    """Drift detection: ours vs Evidently's DataDriftPreset and embedding drift on the same windows, 20 seeded runs
    per scenario; false alarms per 100 windows and detection delay in windows. [--quick] [--json]"""
    _bench_module("drift").cli(list(ctx.args))


@bench_app.command("audit-sampling", context_settings=_PASSTHROUGH, add_help_option=False)
def bench_audit_sampling(ctx: typer.Context):
    """Audit sampling: stratified (audit_queue's) vs uniform at the same daily label budget, drift confined to one
    region of prompt space; detection rate and delay in days, the uniform budget that matches. [--quick] [--json]"""
    _bench_module("audit_sampling").cli(list(ctx.args))


@drift_app.command("check")
def drift_check(
    reference: Annotated[Path, typer.Option(help="Reference serving-log rows (Parquet or JSONL).")],
    current: Annotated[Path, typer.Option(help="Current window's serving-log rows (Parquet or JSONL).")],
    model: Annotated[str, typer.Option(help="Model that computes missing scores/embeddings from prompt and "
                                            "response: production (the alias), latest, an artifact id or a "
                                            "directory.")] = "production",
    window: Annotated[int | None, typer.Option(help="Items per window (default: the current file's rows, at most "
                                                    "half the reference); the last rows are checked.")] = None,
    config: Annotated[Path | None, typer.Option(help="DriftSettings as JSON or YAML (k, null_windows, …).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    root: Annotated[str | None, typer.Option(help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")] = None,
):
    """Check a window of served scores and prompts against a reference: PSI, KS, Wasserstein, expected pairwise
    accuracy, domain classifier, MMD, each against its empirical-null threshold calibrated on the reference.
    Exit 0 (alarm or not), 2 on bad input."""
    from rlhf_assets.evaluation.drift import DriftInputError, DriftSettings
    from rlhf_assets.evaluation.drift_cli import format_result, run_check

    try:
        settings = DriftSettings.from_file(config) if config else DriftSettings()
    except ValueError as exc:
        _fail(str(exc))
    try:
        out = run_check(reference, current, model=model, root=root, settings=settings, window=window)
    except DriftInputError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(out, indent=2) if as_json else format_result(out))


@bench_app.command("overoptimization", context_settings=_PASSTHROUGH, add_help_option=False)
def bench_overoptimization(ctx: typer.Context):
    """Gao et al. 2022 set-up on the tiny preset: gold vs proxy reward against √KL, and where gold peaks."""
    _bench_module("overoptimization").cli(list(ctx.args))


@bench_app.command("cost-fidelity", context_settings=_PASSTHROUGH, add_help_option=False)
def bench_cost_fidelity(ctx: typer.Context):
    """Reward model cost vs fidelity: presets, LoRA, distilled student, cascade — one table. [--quick] [--json]"""
    _bench_module("cost_fidelity").cli(list(ctx.args))


@bench_app.command("ppo-stability", context_settings=_PASSTHROUGH, add_help_option=False)
def bench_ppo_stability(ctx: typer.Context):
    """PPO on the tiny preset over 10 seeds: how many collapse; rollout and training tokens/s. [--json]"""
    _bench_module("ppo_stability").cli(list(ctx.args))


def _bench_module(name: str):
    """Benchmarks live in the repository's bench/ folder (they need the dev extra and a checkout)."""
    import importlib

    repo = Path(__file__).resolve().parents[1]
    if not (repo / "bench" / f"{name}.py").exists():
        _fail(f"bench/{name}.py not found next to {Path(__file__).parent}; run from a checkout with "
              "`pip install -e '.[dev]'`")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return importlib.import_module(f"bench.{name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
