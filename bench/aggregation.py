"""Dawid–Skene benchmark: ours out of core on a crowd far larger than memory, and crowd-kit in memory on a share of it.

    python -m bench.aggregation [--rows N] [--peer-rows N] [--n-iter N] [--batch-rows N] [--repeats N]
                                [--work-dir DIR] [--skip-peer] [--quick] [--json]

One run: bench/crowd.py writes ``rows`` label rows of a realistic crowd to Parquet, chunk by chunk (never whole in
memory). Ours out of core (rlhf_assets/preference/aggregation_out_of_core.py, what `rlhf aggregate` runs on large
Parquet) aggregates all of it; the first ``peer_rows`` rows (whole items) are the head-to-head, where crowd-kit
1.4.2's DawidSkene, our in-memory Dawid–Skene and ours out of core run on the same labels.

Every measurement runs in its own spawned child process. Wall time: the best of ``repeats`` runs (one for the
large run). Peak RSS: the child's VmHWM (and ru_maxrss of any children it waited for; the interpreter and imports
included). In-memory runs also get a tracemalloc peak in a separate child (what the aggregation allocates).
Every method runs exactly ``n_iter`` EM iterations: crowd-kit with tol=-inf, ours with a tolerance so small that
only a non-increasing evidence bound stops it. Accuracy is against the generator's truth.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from bench.children import child_pool
from bench.crowd import accuracy, item_index, write_crowd
from bench.report_table import fmt, print_header

METHODS = ("crowd-kit", "ours", "ours out of core")
_MODULES = {"crowd-kit": "crowdkit.aggregation", "ours": "rlhf_assets.preference.aggregation",
            "ours out of core": "rlhf_assets.preference.aggregation_out_of_core"}
_OUR_TOL = 1e-300


def _maxrss_bytes() -> int:
    """Peak RSS of this process and of the children it waited for. VmHWM rather than ru_maxrss for this process:
    ru_maxrss survives exec, so a spawned child would report its parent's peak at fork time."""
    try:
        status = Path("/proc/self/status").read_text()
        own = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    except (OSError, StopIteration):  # not Linux
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024  # KiB


def _frame(path: str) -> pd.DataFrame:
    """The labels as crowd-kit takes them; object columns, so that tracemalloc sees every buffer aggregation makes."""
    table = pl.read_parquet(path)
    return pd.DataFrame({"task": pd.Series(table["item_id"].to_list(), dtype=object),
                         "worker": pd.Series(table["annotator_id"].to_list(), dtype=object),
                         "label": pd.Series(table["label"].to_list(), dtype=object)})


def _run(method: str, frame: pd.DataFrame, n_iter: int) -> tuple[pd.Series, int]:
    """Aggregate in memory with one method; returns (label per task, iterations run)."""
    if method == "crowd-kit":
        from crowdkit.aggregation import DawidSkene

        model = DawidSkene(n_iter=n_iter, tol=-np.inf)
        labels = model.fit_predict(frame)
        return labels, len(model.loss_history_)
    from rlhf_assets.preference.aggregation import aggregate_table

    table, summary = aggregate_table(frame["task"], frame["worker"], frame["label"], max_iter=n_iter, tol=_OUR_TOL)
    return pd.Series(table["label"].to_numpy(), index=table["item_id"].to_numpy()), summary.n_iter


def _child_in_memory(method: str, path: str, truth_path: str, n_iter: int, repeats: int, traced: bool,
                     labels_out: str | None) -> dict:
    importlib.import_module(_MODULES[method])  # import outside the measured region
    frame = _frame(path)
    truth = np.load(truth_path)
    walls, peak = [], None
    for _ in range(1 if traced else repeats):
        gc.collect()
        if traced:
            tracemalloc.start()
        start = time.perf_counter()
        labels, iters = _run(method, frame, n_iter)
        walls.append(time.perf_counter() - start)
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    ids = pl.Series(labels.index.astype(str))
    right = truth[item_index(ids)] == pd.Series(labels.to_numpy()).map({"a": 0, "b": 1, "tie": 2}).to_numpy()
    if labels_out:
        pl.DataFrame({"item_id": ids, "label": pl.Series(labels.to_numpy().astype(str))}).write_parquet(labels_out)
    return {"walls": walls, "peak_bytes": peak, "n_iter": iters, "accuracy": float(right.mean()),
            "maxrss_bytes": _maxrss_bytes()}


def _child_out_of_core(path: str, out: str, n_iter: int, batch_rows: int, work_dir: str | None) -> dict:
    from rlhf_assets.preference.aggregation_out_of_core import aggregate_parquet

    baseline = _maxrss_bytes()
    start = time.perf_counter()
    result = aggregate_parquet(path, out, max_iter=n_iter, tol=_OUR_TOL, batch_rows=batch_rows, workdir=work_dir)
    return {"walls": [time.perf_counter() - start], "n_iter": result.summary.n_iter,
            "items": result.summary.n_items, "maxrss_bytes": _maxrss_bytes(), "baseline_rss_bytes": baseline,
            "stages": result.stages}


def _in_child(function, *args) -> dict:
    with child_pool(1) as pool:
        return pool.submit(function, *args).result()


def _measure_in_memory(method: str, path: Path, truth: Path, rows: int, n_iter: int, repeats: int,
                       labels_out: Path | None = None) -> dict:
    timed = _in_child(_child_in_memory, method, str(path), str(truth), n_iter, repeats, False,
                      str(labels_out) if labels_out else None)
    traced = _in_child(_child_in_memory, method, str(path), str(truth), n_iter, 1, True, None)
    return {"method": method, "rows": rows, "wall_s": min(timed["walls"]), "wall_s_runs": timed["walls"],
            "n_iter": timed["n_iter"], "accuracy": timed["accuracy"], "maxrss_mib": timed["maxrss_bytes"] / 2**20,
            "peak_mib": traced["peak_bytes"] / 2**20}


def _measure_out_of_core(path: Path, truth: Path, out: Path, rows: int, n_iter: int, batch_rows: int,
                         work_dir: Path, repeats: int = 1) -> dict:
    runs = [_in_child(_child_out_of_core, str(path), str(out), n_iter, batch_rows, str(work_dir))
            for _ in range(repeats)]
    share, items = accuracy(out, truth)
    return {"method": "ours out of core", "rows": rows, "items": items, "batch_rows": batch_rows,
            "wall_s": min(r["walls"][0] for r in runs), "wall_s_runs": [r["walls"][0] for r in runs],
            "n_iter": runs[0]["n_iter"], "accuracy": share, "peak_mib": None,
            "maxrss_mib": max(r["maxrss_bytes"] for r in runs) / 2**20,
            "baseline_rss_mib": runs[0]["baseline_rss_bytes"] / 2**20, "stages_s": runs[0]["stages"]}


def _head_rows(crowd, peer_rows: int, path: Path) -> int:
    """The first row groups (whole items) of the crowd, about ``peer_rows`` rows, to ``path``; their rows."""
    source = pq.ParquetFile(str(crowd.path))
    groups, rows = [], 0
    while rows < 0.95 * peer_rows and len(groups) < source.num_row_groups:  # chunks hold about peer_rows
        groups.append(len(groups))
        rows += source.metadata.row_group(groups[-1]).num_rows
    pq.write_table(source.read_row_groups(groups), str(path))
    return rows


def _agreement(first: Path, second: Path) -> float:
    joined = pl.read_parquet(first).join(pl.read_parquet(second), on="item_id", suffix="_2")
    return float((joined["label"] == joined["label_2"]).mean())


def main(rows: int = 5_000_000, peer_rows: int = 1_000_000, n_iter: int = 20, batch_rows: int = 1_000_000,
         skip_peer: bool = False, json_out: bool = False, repeats: int = 3, work_dir: str | None = None) -> dict:
    """Generate the crowd, run the large out-of-core run and the head-to-head; print and return the figures."""
    peer_rows = min(peer_rows, rows)
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-aggregation-", dir=work_dir) as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        crowd = write_crowd(scratch / "crowd.parquet", rows, chunk_rows=min(1_000_000, peer_rows or rows))
        generated_s = time.perf_counter() - start
        size_mib = crowd.path.stat().st_size / 2**20
        print(f"Dawid-Skene on a synthetic crowd: {crowd.rows:,} label rows, {crowd.items:,} items x 3-5 labels, "
              f"{crowd.annotators:,} annotators (reliable, position-biased, tie-happy, spammers), 3 classes; "
              f"{n_iter} EM iterations for every method; Parquet {size_mib:,.0f} MiB written in {generated_s:.0f} s")
        runs = [_measure_out_of_core(crowd.path, crowd.truth_path, scratch / "out.parquet", crowd.rows, n_iter,
                                     batch_rows, scratch)]
        result: dict = {"rows": crowd.rows, "items": crowd.items, "annotators": crowd.annotators, "n_iter": n_iter,
                        "batch_rows": batch_rows, "parquet_mib": size_mib, "generate_s": generated_s,
                        "repeats": repeats}
        if peer_rows:
            head = scratch / "head.parquet"
            head_rows = _head_rows(crowd, peer_rows, head)
            methods = [m for m in ("crowd-kit", "ours") if not (skip_peer and m == "crowd-kit")]
            for method in methods:
                runs.append(_measure_in_memory(method, head, crowd.truth_path, head_rows, n_iter, repeats,
                                               scratch / "ours.parquet" if method == "ours" else None))
            runs.append(_measure_out_of_core(head, crowd.truth_path, scratch / "head-out.parquet", head_rows, n_iter,
                                             batch_rows, scratch, repeats))
            result["agreement_out_of_core_vs_in_memory"] = _agreement(scratch / "ours.parquet",
                                                                      scratch / "head-out.parquet")
    result["runs"] = runs
    header = (f"{'method':<17} {'rows':>12} {'iters':>5} {'wall s':>8} {'peak MiB':>9} {'maxrss MiB':>10} "
              f"{'accuracy':>8}")
    print_header(header)
    for r in runs:
        print(f"{r['method']:<17} {r['rows']:>12,} {r['n_iter']:>5} {r['wall_s']:>8.2f} {fmt(r['peak_mib'], '9.1f')} "
              f"{r['maxrss_mib']:>10.1f} {r['accuracy']:>8.4f}")
    big = runs[0]
    print(f"out of core, {big['rows']:,} rows: {big['wall_s'] / 60:.1f} min, peak RSS {big['maxrss_mib'] / 1024:.2f} "
          f"GiB (interpreter and imports: {big['baseline_rss_mib']:.0f} MiB), batch_rows {batch_rows:,}; stages: "
          + ", ".join(f"{name.removesuffix('_s')} {seconds:.1f} s" for name, seconds in big["stages_s"].items()))
    if "agreement_out_of_core_vs_in_memory" in result:
        print(f"labels, ours out of core vs ours in memory: {result['agreement_out_of_core_vs_in_memory']:.4%} agree")
    by = {r["method"]: r for r in runs[1:]}
    if "crowd-kit" in by:
        peer, ours = by["crowd-kit"], by["ours"]
        result["speedup"] = peer["wall_s"] / ours["wall_s"]
        result["memory_ratio"] = ours["peak_mib"] / peer["peak_mib"]
        result["accuracy_diff"] = ours["accuracy"] - peer["accuracy"]
        print(f"speed-up in memory (crowd-kit / ours wall time): {result['speedup']:.1f}x")
        print(f"memory ratio in memory (ours / crowd-kit traced peak): {result['memory_ratio']:.3f}")
        print(f"accuracy difference (ours - crowd-kit): {result['accuracy_diff']:+.4f}")
    if json_out:
        print(json.dumps(result, indent=2))
    return result


def cli(argv: list[str] | None = None) -> dict:
    """Command-line entry point (also used by `rlhf bench aggregation`)."""
    return main(**_parse(argv))


def _parse(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.aggregation", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="label rows of the crowd, ours out of core")
    parser.add_argument("--peer-rows", type=int, default=1_000_000,
                        help="rows of the head-to-head with crowd-kit (0: none)")
    parser.add_argument("--n-iter", "--iters", dest="iters", type=int, default=20, help="EM iterations for all")
    parser.add_argument("--batch-rows", type=int, default=1_000_000, help="out of core: rows per batch and bucket")
    parser.add_argument("--work-dir", default=None, help="scratch directory (default: the system's temporary one)")
    parser.add_argument("--skip-peer", action="store_true", help="do not run crowd-kit")
    parser.add_argument("--quick", action="store_true", help="200k rows, 50k head-to-head, one repeat")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per head-to-head method, the best is kept (default 3; 1 with --quick)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.peer_rows, args.batch_rows = 200_000, 50_000, 20_000
    return dict(rows=args.rows, peer_rows=args.peer_rows, n_iter=args.iters, batch_rows=args.batch_rows,
                skip_peer=args.skip_peer, json_out=args.json, repeats=args.repeats or (1 if args.quick else 3),
                work_dir=args.work_dir)


if __name__ == "__main__":
    cli()
