"""Benchmark our Dawid-Skene (rlhf_assets.preference.aggregation) against crowd-kit's on a synthetic task.

    python -m bench.aggregation [--rows N] [--items N] [--annotators N] [--n-iter N] [--big-rows N]
                                [--repeats N] [--skip-peer] [--quick] [--json]

Each measurement runs in its own spawned child process that regenerates the same seeded data: timed runs without
tracemalloc (the best of ``repeats`` is reported, as the machine may be shared) and a separate traced run, where
tracemalloc starts right before the aggregation, so the peak counts only what the aggregation allocates (numpy and
pandas buffers included). ru_maxrss of the timed child (data generation included) is reported too.
Both methods run exactly ``n_iter`` EM iterations: crowd-kit with tol=-inf, ours with a tolerance so small that only
a non-increasing evidence bound would stop it; the iterations actually run are reported.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import resource
import time
import tracemalloc

import numpy as np
import pandas as pd

from bench.children import child_pool

LABELS = np.array(["a", "b", "tie"], dtype=object)
METHODS = ("crowd-kit", "ours")
_MODULES = {"crowd-kit": "crowdkit.aggregation", "ours": "rlhf_assets.preference.aggregation"}
_OUR_TOL = 1e-300


def make_task(rows: int, n_items: int, n_annotators: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """n_items items x rows // n_items labels by distinct annotators, 3 classes, accuracies uniform in 0.55-0.95,
    errors uniform over the other classes. Returns (task/worker/label frame, true label per task)."""
    per = max(rows // n_items, 1)
    if per > n_annotators:
        raise ValueError(f"{per} labels per item need at least {per} annotators, got {n_annotators}")
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n_items)
    accuracy = rng.uniform(0.55, 0.95, n_annotators)
    workers = rng.integers(0, n_annotators, (n_items, per))
    while True:  # redraw the items that got the same annotator twice
        ordered = np.sort(workers, axis=1)
        dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not dup.any():
            break
        workers[dup] = rng.integers(0, n_annotators, (int(dup.sum()), per))
    workers = workers.ravel()
    tasks = np.repeat(np.arange(n_items), per)
    true = truth[tasks]
    correct = rng.random(len(tasks)) < accuracy[workers]
    labels = np.where(correct, true, (true + rng.integers(1, 3, len(tasks))) % 3)
    names = np.array([f"annotator-{i:05d}" for i in range(n_annotators)], dtype=object)
    # object columns (not pyarrow strings) so that tracemalloc sees every buffer the aggregation allocates
    frame = pd.DataFrame({"task": tasks, "worker": pd.Series(names[workers], dtype=object),
                          "label": pd.Series(LABELS[labels], dtype=object)})
    return frame, pd.Series(LABELS[truth], index=np.arange(n_items), name="truth")


def _run(method: str, frame: pd.DataFrame, n_iter: int) -> tuple[pd.Series, int]:
    """Aggregate with one method; returns (label per task, iterations run)."""
    if method == "crowd-kit":
        from crowdkit.aggregation import DawidSkene

        model = DawidSkene(n_iter=n_iter, tol=-np.inf)
        labels = model.fit_predict(frame)
        return labels, len(model.loss_history_)
    from rlhf_assets.preference.aggregation import aggregate_table

    table, summary = aggregate_table(frame["task"], frame["worker"], frame["label"], max_iter=n_iter, tol=_OUR_TOL)
    return pd.Series(table["label"].to_numpy(), index=table["item_id"].to_numpy()), summary.n_iter


def _child(method: str, rows: int, n_items: int, n_annotators: int, n_iter: int, repeats: int, traced: bool) -> dict:
    importlib.import_module(_MODULES[method])  # import outside the measured region
    frame, truth = make_task(rows, n_items, n_annotators)
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
        accuracy = float((labels.reindex(truth.index).to_numpy() == truth.to_numpy()).mean())
        del labels
    return {"walls": walls, "peak_bytes": peak, "n_iter": iters, "accuracy": accuracy,
            "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _in_child(*args) -> dict:
    with child_pool(1) as pool:
        return pool.submit(_child, *args).result()


def _measure(method: str, rows: int, n_items: int, n_annotators: int, n_iter: int, repeats: int,
             traced: bool = True) -> dict:
    timed = _in_child(method, rows, n_items, n_annotators, n_iter, repeats, False)
    out = {"method": method, "rows": rows, "items": n_items, "wall_s": min(timed["walls"]),
           "wall_s_runs": timed["walls"], "n_iter": timed["n_iter"], "accuracy": timed["accuracy"],
           "maxrss_mib": timed["maxrss_bytes"] / 2**20, "peak_mib": None}
    if traced:
        out["peak_mib"] = _in_child(method, rows, n_items, n_annotators, n_iter, 1, True)["peak_bytes"] / 2**20
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(rows: int = 1_000_000, n_items: int = 200_000, n_annotators: int = 2_000, n_iter: int = 20,
         big_rows: int = 5_000_000, skip_peer: bool = False, json_out: bool = False, repeats: int = 3) -> dict:
    """Run the comparison; wall times are the best of ``repeats`` runs (the same for both methods)."""
    per = max(rows // n_items, 1)
    print(f"Dawid-Skene, {rows:,} rows = {n_items:,} items x {per} labels, {n_annotators:,} annotators, "
          f"3 classes, {n_iter} EM iterations; wall = best of {repeats}, peak = tracemalloc in a separate run")
    methods = [m for m in METHODS if not (skip_peer and m == "crowd-kit")]
    runs = [_measure(m, rows, n_items, n_annotators, n_iter, repeats) for m in methods]
    if big_rows:
        runs.append(_measure("ours", big_rows, max(big_rows // per, 1), n_annotators, n_iter, repeats, traced=False))
    header = (f"{'method':<10} {'rows':>10} {'iters':>5} {'wall s':>8} {'peak MiB':>9} {'maxrss MiB':>10} "
              f"{'accuracy':>8}")
    print(header)
    print("-" * len(header))
    for r in runs:
        print(f"{r['method']:<10} {r['rows']:>10,} {r['n_iter']:>5} {r['wall_s']:>8.2f} {_fmt(r['peak_mib'], '9.1f')} "
              f"{r['maxrss_mib']:>10.1f} {r['accuracy']:>8.4f}")
    result: dict = {"rows": rows, "n_items": n_items, "n_annotators": n_annotators, "n_iter": n_iter,
                    "repeats": repeats, "runs": runs}
    by = {r["method"]: r for r in runs if r["rows"] == rows}
    if "crowd-kit" in by:
        peer, ours = by["crowd-kit"], by["ours"]
        result["speedup"] = peer["wall_s"] / ours["wall_s"]
        result["memory_ratio"] = ours["peak_mib"] / peer["peak_mib"]
        result["accuracy_diff"] = ours["accuracy"] - peer["accuracy"]
        print(f"speed-up (crowd-kit / ours wall time): {result['speedup']:.1f}x")
        print(f"memory ratio (ours / crowd-kit traced peak): {result['memory_ratio']:.3f}")
        print(f"accuracy difference (ours - crowd-kit): {result['accuracy_diff']:+.4f}")
    if json_out:
        print(json.dumps(result, indent=2))
    return result


def cli(argv: list[str] | None = None) -> dict:
    """Command-line entry point (also used by `rlhf bench aggregation`)."""
    return main(**_parse(argv))


def _parse(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.aggregation", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=None, help="default: rows / 5")
    parser.add_argument("--annotators", type=int, default=2_000)
    parser.add_argument("--n-iter", "--iters", dest="iters", type=int, default=20, help="EM iterations for both")
    parser.add_argument("--big-rows", type=int, default=5_000_000, help="0 skips the large run of ours alone")
    parser.add_argument("--skip-peer", action="store_true", help="do not run crowd-kit")
    parser.add_argument("--quick", action="store_true", help="50k rows, 10k items, 200 annotators, no large run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per method, the best is kept (default 3; 1 with --quick)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        return dict(rows=50_000, n_items=10_000, n_annotators=200, n_iter=args.iters, big_rows=0,
                    skip_peer=args.skip_peer, json_out=args.json, repeats=args.repeats or 1)
    return dict(rows=args.rows, n_items=args.items or max(args.rows // 5, 1), n_annotators=args.annotators,
                n_iter=args.iters, big_rows=args.big_rows, skip_peer=args.skip_peer, json_out=args.json,
                repeats=args.repeats or 3)


if __name__ == "__main__":
    cli()
