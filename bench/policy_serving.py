"""Policy serving (`rlhf serve-policy`): throughput and latency at a few concurrency levels, one run.

    python -m bench.policy_serving [--concurrency 1 4 16] [--seconds 20] [--threads 2] [--hidden 128] [--json]

A store with a seeded random-init tiny Llama policy (``--hidden``, ``--layers``), its reference (the same weights with
a little noise, so the KL guard computes real ratios; ``--kl-limit`` is set high so nothing is replaced and every
request costs the same), a tiny reward model and a calibration, promoted as a release. The server runs in its own
process on loopback; the load generator is another process (bench/serving.py's closed loop: a fixed number of
concurrent clients, one prompt per request, HH-RLHF prompts). Printed per concurrency: requests/s, p50 / p99
latency, and the mean number of prompts per generate pass (the service's rlhf_policy_batch_size histogram; "-" where
the service has none, i.e. before micro-batching).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.serving import TOKEN, Proc, _env, _free_port, _quantile, run_load

RELEASE = "r20250601-2359"
SAMPLING = {"temperature": 1.0, "max_new_tokens": 32, "max_prompt_tokens": 64}


def prepare(root: Path, hidden: int, layers: int) -> list[str]:
    """The store (policy, reference, reward model, calibration, promoted); the prompts the clients send."""
    import torch

    from rlhf_assets.policy.artifacts import save_policy
    from rlhf_assets.policy.model import PolicyModel, tiny_lm, tiny_tokenizer
    from rlhf_assets.preference.sample_data import load_hh_pairs
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.registry.artifacts import ArtifactStore
    from rlhf_assets.reward.artifact import save_reward_model
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.network import build_reward_net
    from rlhf_assets.storage import Storage

    storage = Storage(str(root))
    store = ArtifactStore(storage)
    tok = tiny_tokenizer()
    model = PolicyModel(tiny_lm(tok, hidden=hidden, layers=layers, seed=0))
    with tempfile.TemporaryDirectory() as d:
        save_policy(model, tok, "sft", SAMPLING, Path(d) / "sft")
        reference = store.put_dir(Path(d) / "sft", kind="sft_policy", manifest={"kind": "sft_policy"}).id
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.lm.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        save_policy(model, tok, "ppo", SAMPLING, Path(d) / "ppo")
        policy = store.put_dir(Path(d) / "ppo", kind="ppo_policy", manifest={"kind": "ppo_policy"}).id
        cfg = RMConfig(preset="tiny", max_length=128, seed=0)
        net, rm_tok = build_reward_net(cfg)
        save_reward_model(net, rm_tok, cfg, Path(d) / "rm")
        rm = store.put_dir(Path(d) / "rm", kind="reward_model", manifest={}).id
        (Path(d) / "cal").mkdir()
        (Path(d) / "cal" / "calibration.json").write_text(json.dumps(
            {"calibrator": {"method": "platt", "slope": 1.0, "intercept": 0.0}}))
        calibration = store.put_dir(Path(d) / "cal", kind="calibration", manifest={"parent_ids": [rm]}).id
    Registry(storage).set_alias("production", RELEASE, {"policy": policy, "sft_policy": reference,
                                                        "reward_model": rm, "calibration": calibration},
                                action="promote", reason="benchmark", actor="bench")
    return list(dict.fromkeys(p["prompt"] for p in load_hh_pairs()))[:500]


def _batches(url: str) -> tuple[float, float] | None:
    """(prompts, generate passes) so far from the service's batch-size histogram; None when it has none."""
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    sums = re.findall(r"^rlhf_policy_batch_size_sum\{[^}]*\} (\S+)$", text, re.M)
    counts = re.findall(r"^rlhf_policy_batch_size_count\{[^}]*\} (\S+)$", text, re.M)
    if not sums:
        return None
    return sum(map(float, sums)), sum(map(float, counts))


def main(concurrencies: list[int], seconds: float, threads: int, hidden: int, layers: int,
         extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        prompts = prepare(root, hidden, layers)
        bodies = root / "bodies.json"
        bodies.write_text(json.dumps([{"prompt": p} for p in prompts]))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "rlhf_assets.policy_serving.server", "--port", str(port), "--threads",
               str(threads), "--kl-limit", "1000000", "--max-in-flight", "4096", "--log-flush-s", "5", *extra]
        proc = Proc(cmd, _env(root, threads), url + "/readyz", {"Authorization": f"Bearer {TOKEN}"})
        rows = []
        try:
            run_load(url + "/v1/generate", bodies, 2, 3.0, 10 ** 9, TOKEN)  # warm-up
            for c in concurrencies:
                before = _batches(url)
                out = run_load(url + "/v1/generate", bodies, c, seconds, 10 ** 9, TOKEN)
                after = _batches(url)
                lat = out["latencies"]
                mean_batch = None
                if before is not None and after is not None and after[1] > before[1]:
                    mean_batch = (after[0] - before[0]) / (after[1] - before[1])
                rows.append({"concurrency": c, "requests": out["ok"], "errors": out["errors"],
                             "requests_per_s": out["ok"] / out["elapsed_s"],
                             "p50_ms": 1000 * (_quantile(lat, 0.5) or float("nan")),
                             "p99_ms": 1000 * (_quantile(lat, 0.99) or float("nan")), "mean_batch": mean_batch})
                print(_row(rows[-1]), file=sys.stderr, flush=True)
        finally:
            proc.stop()
    return {"hidden": hidden, "layers": layers, "threads": threads, "seconds": seconds,
            "max_new_tokens": SAMPLING["max_new_tokens"], "server_args": extra, "rows": rows}


def _row(r: dict) -> str:
    batch = f"{r['mean_batch']:.2f}" if r["mean_batch"] is not None else "-"
    return (f"{r['concurrency']:>11} {r['requests']:>8} {r['requests_per_s']:>10.2f} {r['p50_ms']:>9.0f} "
            f"{r['p99_ms']:>9.0f} {batch:>10}")


def cli(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.policy_serving", description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a, extra = p.parse_known_args(argv)
    out = main(a.concurrency, a.seconds, a.threads, a.hidden, a.layers, extra)
    print(f"{'concurrency':>11} {'requests':>8} {'requests/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'mean batch':>10}")
    for r in out["rows"]:
        print(_row(r))
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    cli()
