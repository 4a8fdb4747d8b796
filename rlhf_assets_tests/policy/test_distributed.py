"""The policy on N processes: torchrun with gloo on CPU against one plain process (tiny preset, one thread each).

- PPO on 2 processes, each sampling half of every rollout, ends where 1 process ends: the same per-step KL, reward,
  losses and β within TOL_METRIC, the same last weights within TOL_WEIGHT per parameter, one summary line (rank 0).
- kill -9 of ONE rank after the first checkpoint brings the run down (torchrun stops the rest); the same command on
  ONE process resumes from the checkpoint the two wrote and finishes where the uninterrupted run did.
- SFT: one process killed after its first checkpoint, the rerun on TWO processes resumes and finishes where an
  uninterrupted one-process run did (so its steps after the checkpoint ran split over two ranks).

Why tolerances and not bit-identity: the arithmetic is the same (sampling randomness is per prompt and position,
every statistic global, every loss the one-process loss), but float32 sums come out in a different order — a rank
forwards 4 rows of 12 tokens instead of 8 rows of 24 (other matmul blockings, softmax over other padding), each
micro-batch mean is the sum of two ranks' shares, and DDP adds two half-gradients. Those are ~1e-7 relative per
operation; through a few Adam steps at lr 1e-3 they stay orders of magnitude under TOL_WEIGHT (measured largest
differences are in the module docstring's figures below). A sampled token could in principle flip when a
probability differs in its last bits at the draw's boundary; the comparisons would then fail loudly, not pass.

Measured (this machine): largest per-parameter difference 2×half vs 1×all after 3 PPO steps ~1e-6; metrics ~1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf_assets_tests.support import TINY_PPO, policy_cmd, subprocess_env, write_jsonl

pytestmark = pytest.mark.slow

TIMEOUT = 300
TOL_WEIGHT = 1e-5  # max |Δ| per parameter (weights are O(1); float-order noise measured at 1e-6)
TOL_METRIC = 1e-4  # relative (and absolute near 0) on per-step KL, reward, losses, β
COMPARED = ("kl", "kl_per_token", "proxy_reward", "beta", "pg_loss", "value_loss", "approx_kl", "entropy",
            "response_length", "no_eos_share", "explained_variance", "loss", "grad_norm", "sft_nll")
PPO = {**TINY_PPO, "steps": 3, "checkpoint_every": 1, "eval_every": 3, "sft_mix_share": 0.25}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(n: int, *args: str) -> list[str]:
    """The entry point under torchrun, as on a GPU node (``torchrun --nproc-per-node N -m …``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr",
            "127.0.0.1", "--master-port", str(_free_port()), "--monitor-interval", "0.2",
            "-m", "rlhf_assets.policy.entrypoint", *args]


def _env() -> dict:
    return subprocess_env(GLOO_SOCKET_IFNAME="lo")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _summary(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"one summary line (rank 0 only) expected: {stdout[-2000:]}"
    return json.loads(lines[0])


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = _checkpoint(a)["model"], _checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def _assert_same_metrics(a: Path, b: Path) -> None:
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in COMPARED:
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=TOL_METRIC, abs=TOL_METRIC), (ra["step"], key)


def _worker_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (children of the launcher that carry RANK)."""
    found: dict[int, int] = {}
    todo = [launcher]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if pid != launcher and "RANK" in env and "LOCAL_RANK" in env:
            found[int(env["RANK"])] = pid
    return found


def _kill_after_first_checkpoint(cmd: list[str], out: Path, rank: int | None) -> int:
    """Start ``cmd``; SIGKILL its worker of ``rank`` (None: the process itself) once the first checkpoint exists;
    the step of the checkpoint it left."""
    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + TIMEOUT
    while victim.poll() is None and not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    pid = victim.pid if rank is None else _worker_pids(victim.pid).get(rank)
    assert pid is not None, "no worker of that rank"
    os.kill(pid, signal.SIGKILL)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode != 0, f"the run ended before it could be killed: {err[-2000:]}"
    return int(_checkpoint(out)["step"])


@pytest.fixture(scope="module")
def ppo_args(tiny_setup, tmp_path_factory):
    d = tmp_path_factory.mktemp("ppo_n")
    config = d / "ppo.json"
    config.write_text(json.dumps(PPO))
    return d, ["ppo", "--config", str(config), "--sft", tiny_setup["sft_id"], "--reward-model", tiny_setup["rm_id"],
               "--prompts", str(write_jsonl(d / "p.jsonl", [{"prompt": p} for p in tiny_setup["prompts"]])),
               "--eval-prompts", str(write_jsonl(d / "e.jsonl", [{"prompt": p} for p in tiny_setup["eval_prompts"]])),
               "--sft-data", str(write_jsonl(d / "s.jsonl", tiny_setup["sft_rows"])), "--store", tiny_setup["store"]]


@pytest.fixture(scope="module")
def ppo_one_process(ppo_args):
    d, args = ppo_args
    return d / "one", _summary(_run(policy_cmd(*args, "--out", str(d / "one"))).stdout)


def test_ppo_on_two_processes_matches_one(ppo_args, ppo_one_process):
    d, args = ppo_args
    one, s1 = ppo_one_process
    s2 = _summary(_run(torchrun_cmd(2, *args, "--out", str(d / "two"))).stdout)
    assert s1["steps_run"] == s2["steps_run"] == PPO["steps"]
    _assert_same_metrics(one, d / "two")
    assert _max_weight_difference(one, d / "two") < TOL_WEIGHT
    assert s2["selected_step"] == s1["selected_step"]
    assert s2["selected"]["kl"] == pytest.approx(s1["selected"]["kl"], rel=TOL_METRIC, abs=TOL_METRIC)
    # the checkpoint does not depend on N: same keys, same optimizer layout
    assert _checkpoint(one).keys() == _checkpoint(d / "two").keys()


def test_ppo_kill_one_rank_then_one_process_resumes(ppo_args, ppo_one_process):
    d, args = ppo_args
    one, s1 = ppo_one_process
    out = d / "crash"
    step = _kill_after_first_checkpoint(torchrun_cmd(2, *args, "--out", str(out)), out, rank=1)
    assert 0 < step < PPO["steps"]
    resumed = _summary(_run(policy_cmd(*args, "--out", str(out))).stdout)
    assert resumed["resumed_from_step"] == step and resumed["steps_run"] == PPO["steps"]
    _assert_same_metrics(one, out)
    assert _max_weight_difference(one, out) < TOL_WEIGHT


def test_sft_killed_on_one_process_resumes_on_two(tiny_setup, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", tiny_setup["sft_rows"])
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 16, "max_steps": 6, "checkpoint_every": 2,
                                  "log_every": 1, "max_prompt_tokens": 24, "max_response_tokens": 16}))
    args = ["sft", "--config", str(config), "--data", str(data), "--store", str(tmp_path / "store")]
    ref = _summary(_run(policy_cmd(*args, "--out", str(tmp_path / "one"))).stdout)
    out = tmp_path / "crash"
    step = _kill_after_first_checkpoint(policy_cmd(*args, "--out", str(out)), out, rank=None)
    assert 0 < step < 6
    resumed = _summary(_run(torchrun_cmd(2, *args, "--out", str(out))).stdout)
    assert resumed["resumed_from_step"] == step and resumed["global_step"] == ref["global_step"] == 6
    _assert_same_metrics(tmp_path / "one", out)
    assert _max_weight_difference(tmp_path / "one", out) < TOL_WEIGHT
    assert resumed["metrics"]["train_nll"] == pytest.approx(ref["metrics"]["train_nll"], rel=TOL_METRIC)
