"""Plain helpers shared by several test modules: tiny synthetic data, JSONL files, entry-point commands and their
environment, trainings killed mid-run, servers started as processes on loopback, tiny training settings, and a set of gate inputs that passes every gate.

Fixtures live in conftest.py files (pytest finds them by name); what tests import by name lives here (or in
records.py, defs/dagster_support.py). Test modules never import from conftest.py files or from other test modules
(test_project.py checks this).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from rlhf_assets.evaluation.gates import GateInputs, Measured

REPO = Path(__file__).resolve().parents[1]

# Data ----------------------------------------------------------------------------------------------------------


def learnable_pairs(n: int = 240, start: int = 0) -> list[dict]:
    """Chosen responses say something helpful, rejected ones something rude: a tiny model learns it in seconds."""
    return [{"prompt": f"Human: question number {k}?\n\nAssistant:",
             "chosen": f"sure, here is a helpful answer about topic {k % 17}",
             "rejected": f"no, go away, that is a stupid question about topic {k % 13}"} for k in range(start, start + n)]


TOPICS = ["the weather", "a recipe", "my code", "the movie", "this book", "the trip", "a poem", "the game",
          "our plan", "the garden"]
FILLER = ["it is", "i think it is", "honestly it is", "overall it seems", "to me it looks", "in short it is"]


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Tiny synthetic preference pairs: the chosen response says "good", the rejected one "bad"."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        f1, f2 = rng.choice(FILLER), rng.choice(FILLER)
        rows.append({"prompt": f"what do you think about {topic}? ({i})",
                     "chosen": f"{f1} good , {topic} .", "rejected": f"{f2} bad , {topic} ."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Entry points in subprocesses ----------------------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for entry-point subprocesses: offline, one intra-op thread per process (on a busy 2-core
    machine two OpenMP threads per process spin against each other and a step takes 50x longer)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                        "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "PL_GLOBAL_SEED")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def entrypoint_cmd(*args: str) -> list[str]:
    """The reward-model training entry point."""
    return [sys.executable, "-m", "rlhf_assets.reward.entrypoint", *args]


def policy_cmd(*args: str) -> list[str]:
    """The policy (SFT, PPO) training entry point."""
    return [sys.executable, "-m", "rlhf_assets.policy.entrypoint", *args]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, poll_s: float = 0.05,
               what: str = "the condition") -> None:
    """Poll ``condition()`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def kill_once_written(cmd: list[str], path: Path, env: dict[str, str], timeout_s: float = 240) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``path`` exists (a checkpoint, a pushed pointer); fails if the run
    ended on its own first."""
    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout_s
    while victim.poll() is None and not path.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(victim.pid, signal.SIGKILL)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"


def kill_children_once(ready: Callable[[], bool], module: str, poll_s: float, timeout_s: float = 240) -> tuple[
        threading.Thread, list[int]]:
    """A started watcher thread that, once ``ready()`` holds, SIGKILLs this process's descendants running ``module``
    (a training launched inside a Dagster run, as a lost pod would). The list fills with the pids it killed."""
    import psutil

    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                for child in psutil.Process().children(recursive=True):
                    if module in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        killed.append(child.pid)
                return
            time.sleep(poll_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher, killed


@dataclass
class LoopbackServer:
    """A server process started by `start_on_loopback`, and the URL it listens on."""
    process: subprocess.Popen
    url: str

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_on_loopback(module: str, *args: str, env: dict[str, str], ready_path: str | None, what: str,
                      ready_timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """`python -m MODULE --port 0 ARGS` with stderr piped: reads the URL from the first line it logs, then (unless
    ready_path is None) polls URL + ready_path until it answers 200. Returns the process and the URL; raises
    AssertionError naming `what` (and killing the process) if it does not start, exits, or is never ready."""
    process = subprocess.Popen([sys.executable, "-m", module, "--port", "0", *args], stderr=subprocess.PIPE,
                               text=True, env=env)
    line = process.stderr.readline()
    match = re.search(r"http://([\d.]+):(\d+)", line)
    if not match:
        rest = process.stderr.read() if process.poll() is not None else ""
        process.kill()
        raise AssertionError(f"{what} did not start: {line}{rest}")
    url = f"http://{match.group(1)}:{match.group(2)}"
    if ready_path is None:
        return process, url
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"{what} exited before answering {ready_path}: {process.stderr.read()}")
        time.sleep(0.05)
    process.kill()
    process.wait(10)
    raise AssertionError(f"{what} never answered {ready_path}")


# Training settings ---------------------------------------------------------------------------------------------

#: A PPO run that finishes in seconds on one CPU thread.
TINY_PPO = {"steps": 8, "rollout_prompts": 16, "minibatch_size": 8, "micro_batch_size": 8, "max_new_tokens": 12,
            "max_prompt_tokens": 24, "eval_every": 2, "n_eval_prompts": 16, "lr": 1e-3, "update_epochs": 2}

# Deployment gates ----------------------------------------------------------------------------------------------

CHECKS_OK = [{"check": "rm_calibration:test_accuracy", "status": "passed", "detail": "passed in run x"},
             {"check": "ppo_policy:kl_within_budget", "status": "passed", "detail": "passed in run x"}]
#: Gate inputs on which every gate passes (decide(GOOD) promotes).
GOOD = GateInputs(
    upstream_checks=CHECKS_OK,
    rm_test_accuracy=Measured(0.72, 0.66, 0.78), calibrated_ece=Measured(0.02, 0.01, 0.04),
    human_rm_correlation=Measured(0.45, 0.35, 0.55), kl=Measured(4.0, 3.5, 4.5), kl_budget=12.0,
    ope_reliable=True, uplift=Measured(0.05, 0.02, 0.08), proxy_uplift=Measured(0.3, 0.2, 0.4))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus series' samples whose labels include ``labels``, from /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
