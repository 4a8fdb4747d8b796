"""Reward-model serving: ours vs the naive service and the servers a user would pick instead, same model, one run.

    python -m bench.serving [--presets tiny small] [--concurrency 1 8 32 64] [--seconds 15] [--quick] [--json]
    rlhf bench serving …

Each server runs in its own process on loopback; the load generator is another process (aiohttp, a fixed number of
concurrent clients, one item per request, bounded by count and time). Every configuration serves the same stored
reward model (``tiny``: random-init 2-layer BERT; ``small``: the pretrained all-MiniLM-L6-v2 with a seeded head —
serving cost does not depend on the head's training) on the same HH-RLHF (prompt, response) texts, truncated like
training (max length 256):

  (a) naive     FastAPI, one forward per request (the service every team writes first)
  (b) ours      rlhf serve, micro-batching, PyTorch backend
  (c) ours      rlhf serve, micro-batching, ONNX Runtime backend
  (b') ours     rlhf serve, PyTorch backend with bf16 matmuls (--precision bf16; scores within ~1e-2 of fp32)
  (d) ours      cache hits (the same items again)
  (e) LitServe  (max_batch_size, batch_timeout) and Ray Serve (@serve.batch), same batch size and wait as ours —
                installed by ``make bench``; skipped with a reason when missing

Printed per configuration: items/s, p50 / p99 latency, mean batch size, and the share of this machine's fp32 matmul
peak the throughput implies (2 × non-embedding parameters × tokens per item × items/s ÷ the measured peak). Then the
targets (small preset, concurrency 32) and an overload run: open-loop arrivals at twice the sustainable rate against
``max_in_flight`` = 32 — how fast the 429s come, and whether the accepted requests keep their latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
MAX_LENGTH = 256
BATCH, WAIT_MS = 64, 4.0


# load generator (its own process) --------------------------------------------------------------------------------
async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float,
                       headers: dict) -> dict:
    import aiohttp

    latencies, errors, codes = [], 0, {}
    counter = iter(range(10 ** 9))
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        async def worker():
            nonlocal errors
            while True:
                i = next(counter)
                if i >= requests or time.perf_counter() > deadline:
                    return
                t = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[i % len(bodies)],
                                            headers={"content-type": "application/json"}) as r:
                        await r.read()
                        codes[r.status] = codes.get(r.status, 0) + 1
                        if r.status == 200:
                            latencies.append(time.perf_counter() - t)
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"ok": len(latencies), "errors": errors, "codes": codes, "elapsed_s": elapsed, "latencies": latencies}


async def _open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, headers: dict) -> dict:
    """Poisson arrivals at ``rate`` per second, never waiting for answers (an overload test)."""
    import aiohttp

    accepted, refused, other = [], [], 0
    rng = random.Random(0)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        async def one(body):
            nonlocal other
            t = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    (accepted if r.status == 200 else refused if r.status == 429 else [None]).append(
                        time.perf_counter() - t)
                    other += r.status not in (200, 429)
            except aiohttp.ClientError:
                other += 1

        tasks, t0, i = [], time.perf_counter(), 0
        next_at = t0
        while next_at - t0 < seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
            i += 1
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return {"accepted": accepted, "refused": refused, "other": other, "sent": i, "seconds": seconds}


def load_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", required=True, help="JSON file: a list of request bodies")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=10 ** 9)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rate", type=float, help="Open loop at this many requests/s instead.")
    p.add_argument("--token")
    a = p.parse_args(argv)
    bodies = [json.dumps(b).encode() for b in json.loads(Path(a.bodies).read_text())]
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    if a.rate:
        out = asyncio.run(_open_loop(a.url, bodies, a.rate, a.seconds, headers))
    else:
        out = asyncio.run(_closed_loop(a.url, bodies, a.concurrency, a.requests, a.seconds, headers))
    print(json.dumps(out))


# set-up ------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(preset: str, root: Path) -> dict[str, Any]:
    """A store whose production alias serves a reward model of ``preset``; the texts and their token counts."""
    from bench.flops import non_embedding_parameters
    from rlhf_assets.preference.sample_data import load_hh_pairs
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.reward.artifact import load_reward_model, save_reward_model
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.network import build_reward_net
    from rlhf_assets.storage import Storage

    storage = Storage(str(root))
    cfg = RMConfig(preset=preset, max_length=MAX_LENGTH, seed=0)
    net, tok = build_reward_net(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_reward_model(net, tok, cfg, d)
        artifact = ArtifactStore(storage).put_dir(d, kind="reward_model", manifest={"preset": preset}).id
    Registry(storage).set_alias("production", "r20250601-2359", {"reward_model": artifact}, action="promote",
                                reason="benchmark", actor="bench")
    pairs = load_hh_pairs()
    texts = [(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")]
    scorer = load_reward_model(ArtifactStore(storage).get(artifact))
    tokens = [len(scorer.encoder.encode(p, r).input_ids) for p, r in texts[:2000]]
    _, n_params = non_embedding_parameters(scorer.net)
    return {"artifact": artifact, "dir": str(ArtifactStore(storage).get(artifact)), "texts": texts,
            "mean_tokens": sum(tokens) / len(tokens), "params": n_params}


class Proc:
    def __init__(self, cmd: list[str], env: dict, ready_url: str, headers: dict | None = None, timeout: float = 120):
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        self.url = ready_url
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{cmd[2:5]} exited: {self.p.stderr.read()[-2000:]}")
            try:
                if httpx.get(ready_url, headers=headers or {}, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{cmd[2:5]} never became ready")

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


def _env(root: Path, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update({"RLHF_STORAGE_ROOT": str(root), "RLHF_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(REPO),
                "RLHF_ONNX_CACHE": str(root / "onnx"), "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


def start(kind: str, setup: dict, root: Path, threads: int, batch_log: Path | None = None,
          extra: tuple[str, ...] = ()) -> tuple[Proc, str, dict]:
    port = _free_port()
    env = _env(root, threads)
    if kind in ("torch", "onnx", "cached", "bf16"):
        backend = "onnx" if kind == "onnx" else "torch"
        cache = "100000" if kind == "cached" else "0"
        cmd = [sys.executable, "-m", "rlhf_assets.serving.server", "--port", str(port), "--backend", backend,
               "--precision", "bf16" if kind == "bf16" else "fp32",
               "--threads", str(threads), "--cache-entries", cache, "--max-batch-size", str(BATCH),
               "--max-wait-ms", str(WAIT_MS), "--max-in-flight", "4096", "--log-flush-s", "5", *extra]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        proc = Proc(cmd, env, f"http://127.0.0.1:{port}/readyz", headers)
        return proc, f"http://127.0.0.1:{port}/v1/score", headers
    cmd = [sys.executable, "-m", "bench.serving_peers", kind, "--model", setup["dir"], "--port", str(port),
           "--threads", str(threads), "--max-batch-size", str(BATCH), "--max-wait-ms", str(WAIT_MS)]
    if batch_log is not None:
        cmd += ["--batch-log", str(batch_log)]
    proc = Proc(cmd, env, f"http://127.0.0.1:{port}/healthz", timeout=240)
    return proc, f"http://127.0.0.1:{port}/score", {}


def run_load(url: str, bodies_file: Path, concurrency: int, seconds: float, requests: int,
             token: str | None, rate: float | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.serving", "load", "--url", url, "--bodies", str(bodies_file),
           "--concurrency", str(concurrency), "--seconds", str(seconds), "--requests", str(requests)]
    if token:
        cmd += ["--token", token]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=seconds * 4 + 120)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _ours_batches(url: str) -> tuple[float, float]:
    """(items, forward passes) so far, from the service's batch-size histogram."""
    import httpx

    text = httpx.get(url.replace("/v1/score", "/metrics"), headers={"Authorization": f"Bearer {TOKEN}"}).text
    total = sum(float(v) for v in re.findall(r"^rlhf_rm_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(r"^rlhf_rm_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return total, count


def measure(kind: str, setup: dict, root: Path, concurrencies: list[int], seconds: float, requests: int,
            threads: int, peak: float) -> list[dict]:
    rows = []
    bodies_file = root / f"bodies-{kind}.json"
    texts = setup["texts"]
    if kind == "cached":  # a small set that fits the cache, sent once before measuring
        texts = texts[:256]
    bodies_file.write_text(json.dumps([{"prompt": p, "response": r} for p, r in texts]))
    batch_log = root / f"batches-{kind}.txt"
    try:
        proc, url, headers = start(kind, setup, root, threads, batch_log)
    except (RuntimeError, FileNotFoundError) as exc:
        return [{"server": kind, "skipped": str(exc)[-300:]}]
    token = TOKEN if headers else None
    try:
        if kind == "cached":
            run_load(url, bodies_file, 8, 60, len(texts), token)  # fill the cache
        run_load(url, bodies_file, 4, 3, 64, token)  # warm-up
        for c in concurrencies:
            batch_log.unlink(missing_ok=True)
            before = _ours_batches(url) if token else (0.0, 0.0)  # the histogram is cumulative
            out = run_load(url, bodies_file, c, seconds, requests, token)
            lat = out["latencies"]
            rate = out["ok"] / out["elapsed_s"] if out["elapsed_s"] else 0.0
            if token:
                after = _ours_batches(url)
                passes = after[1] - before[1]
                mean_batch = (after[0] - before[0]) / passes if passes else None
            elif batch_log.exists():
                sizes = [int(x) for x in batch_log.read_text().split()]
                mean_batch = sum(sizes) / len(sizes) if sizes else None
            else:
                mean_batch = None
            flops = 2.0 * setup["params"] * setup["mean_tokens"] * rate
            rows.append({"server": kind, "concurrency": c, "items_per_s": rate, "ok": out["ok"],
                         "errors": out["errors"], "p50_ms": (_quantile(lat, 0.5) or 0) * 1000,
                         "p99_ms": (_quantile(lat, 0.99) or 0) * 1000, "mean_batch": mean_batch,
                         # cache hits run no model: no FLOPs to credit
                         "peak_share": flops / peak if peak and kind != "cached" else None})
    finally:
        proc.stop()
    return rows


def overload(setup: dict, root: Path, sustainable: float, unloaded_p99_ms: float, seconds: float,
             threads: int, backend: str) -> dict:
    bodies_file = root / "bodies-overload.json"
    bodies_file.write_text(json.dumps([{"prompt": p, "response": r} for p, r in setup["texts"]]))
    proc, url, _ = start(backend, setup, root, threads, extra=("--max-in-flight", "32"))
    try:
        out = run_load(url, bodies_file, 0, seconds, 0, TOKEN, rate=2 * sustainable)
    finally:
        proc.stop()
    accepted_p99 = (_quantile(out["accepted"], 0.99) or 0) * 1000
    refused_p99 = (_quantile(out["refused"], 0.99) or 0) * 1000
    return {"offered_per_s": 2 * sustainable, "sent": out["sent"], "accepted": len(out["accepted"]),
            "refused_429": len(out["refused"]), "other": out["other"], "refused_p99_ms": refused_p99,
            "accepted_p99_ms": accepted_p99, "unloaded_p99_ms": unloaded_p99_ms}


def bf16_fidelity(setup: dict, n: int = 400) -> dict:
    """How far --precision bf16 moves the scores: Spearman with fp32 and the largest difference, on n texts."""
    import numpy as np
    from scipy.stats import spearmanr

    from rlhf_assets.serving.engine import ServedModel

    texts = setup["texts"][:n]
    fp32 = ServedModel(setup["dir"], setup["artifact"])
    bf16 = ServedModel(setup["dir"], setup["artifact"], precision="bf16")
    a, b = [], []
    for i in range(0, len(texts), 16):
        seqs = [fp32.encode(p, r) for p, r in texts[i:i + 16]]
        a.extend(fp32.run(seqs)[0])
        b.extend(bf16.run(seqs)[0])
    a, b = np.array(a), np.array(b)
    return {"spearman": float(spearmanr(a, b)[0]), "max_abs_diff": float(np.abs(a - b).max()),
            "score_std": float(a.std()), "n": len(a)}


def _fmt_table(rows: list[dict]) -> str:
    lines = [f"{'preset':7} {'server':9} {'conc':>4} {'items/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
             f"{'peak %':>7} {'errors':>6}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r.get('preset', ''):7} {r['server']:9} skipped: {r['skipped']}")
            continue
        batch = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else "-"
        peak = f"{100 * r['peak_share']:.2f}" if r.get("peak_share") is not None else "-"
        lines.append(f"{r['preset']:7} {r['server']:9} {r['concurrency']:>4} {r['items_per_s']:>9.1f} "
                     f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {batch:>6} {peak:>7} {r['errors']:>6}")
    return "\n".join(lines)


def main(presets: list[str], concurrencies: list[int], seconds: float, requests: int, servers: list[str],
         threads: int, json_out: bool, overload_s: float) -> dict:
    from bench.flops import fp32_matmul_peak

    # best of three probes: on a shared machine a single probe can land on a busy moment
    peak = max(fp32_matmul_peak(n=2048, repeats=10)["flops_per_s"] for _ in range(3))
    rows, summary = [], {"fp32_peak_gflops": peak / 1e9, "threads": threads, "cpus": os.cpu_count()}
    for preset in presets:
        root = Path(tempfile.mkdtemp(prefix=f"bench-serving-{preset}-"))
        setup = prepare(preset, root)
        if "bf16" in servers:
            summary[f"bf16_fidelity_{preset}"] = bf16_fidelity(setup)
        for kind in servers:
            for row in measure(kind, setup, root, concurrencies, seconds, requests, threads, peak):
                rows.append({"preset": preset, **row})
        if not json_out:
            print(_fmt_table([r for r in rows if r["preset"] == preset]), flush=True)
        at32 = {r["server"]: r for r in rows if r["preset"] == preset and r.get("concurrency") == 32}
        if "naive" in at32 and {"torch", "onnx"} & set(at32):
            best = max((at32[k] for k in ("torch", "onnx") if k in at32), key=lambda r: r["items_per_s"])
            peers = [at32[k] for k in ("litserve", "ray") if k in at32]
            best_peer = max(peers, key=lambda r: r["items_per_s"]) if peers else None
            targets = {
                "ours_backend": best["server"],
                "ours_items_per_s": best["items_per_s"],
                "bf16_vs_naive_x": (at32["bf16"]["items_per_s"] / max(at32["naive"]["items_per_s"], 1e-9)
                                    if "bf16" in at32 else None),
                "vs_naive_x": best["items_per_s"] / max(at32["naive"]["items_per_s"], 1e-9),
                "p99_vs_naive": (best["p99_ms"], at32["naive"]["p99_ms"]),
                "vs_best_peer_x": best["items_per_s"] / best_peer["items_per_s"] if best_peer else None,
                "best_peer": best_peer["server"] if best_peer else None,
                "p99_vs_best_peer": (best["p99_ms"], best_peer["p99_ms"]) if best_peer else None,
                "cache_hit_p99_ms": at32["cached"]["p99_ms"] if "cached" in at32 else None,
            }
            if overload_s > 0:
                targets["overload"] = overload(setup, root, best["items_per_s"], best["p99_ms"], overload_s, threads,
                                               best["server"])
            summary[f"targets_{preset}_c32"] = targets
            if not json_out:
                print(json.dumps(targets, indent=2), flush=True)
    summary["rows"] = rows
    if json_out:
        print(json.dumps(summary, indent=2))
    return summary


def cli(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "load":
        load_main(argv[1:])
        return {}
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=15.0, help="Measured seconds per configuration.")
    p.add_argument("--requests", type=int, default=100_000, help="At most this many requests per configuration.")
    p.add_argument("--servers", nargs="+", default=["naive", "torch", "onnx", "bf16", "cached", "litserve", "ray"],
                   choices=["naive", "torch", "onnx", "bf16", "cached", "litserve", "ray"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Intra-op threads of every server.")
    p.add_argument("--overload-seconds", type=float, default=15.0, help="0: no overload run.")
    p.add_argument("--quick", action="store_true", help="tiny, concurrency 1 and 8, 2 s each, naive and ours.")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.presets, a.concurrency, a.seconds, a.requests = ["tiny"], [1, 8], 2.0, 400
        a.servers, a.overload_seconds = ["naive", "torch", "cached"], 0.0
    return main(a.presets, a.concurrency, a.seconds, a.requests, a.servers, a.threads, a.json, a.overload_seconds)


if __name__ == "__main__":
    cli()
