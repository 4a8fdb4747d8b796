"""Crash-resume and DDP through the real entry point, in subprocesses (tiny preset, CPU).

RESUME: a run is killed with SIGKILL right after its first mid-epoch checkpoint; rerunning the same command
resumes from ``checkpoints/last.ckpt`` (weights, optimizer, scheduler, step counters, callback states, RNG and the
data position) and must end with bit-identical weights (sha256 of model.safetensors) and identical metrics to an
uninterrupted run.

DDP: ``--strategy ddp --devices 2 --accelerator cpu`` (gloo, Lightning launches rank 1) with per-device batch 4
against one process with batch 8 — the same GLOBAL batch, seed and data. The batch sampler gives each rank a
strided slice of the SAME global batch order, dropout is 0, the loss is a per-pair mean with equal per-rank pair
counts and DDP averages gradients, so both runs take mathematically identical steps; they differ only by float
summation order (per-rank partial sums + all-reduce vs one sum). Tolerance: |Δ| ≤ 1e-5 on the val log-loss, the
best val loss and the train log-loss; equal val accuracy and step count. Measured: ~2e-7. For scale, merely
changing which pairs share a batch (length grouping off) moves the val log-loss by 1.6e-3, so a sampler bug fails.
Weights are not compared: parameters that only shift every reward by the same constant (the last LayerNorm's
bias) get an exactly-zero Bradley–Terry gradient, and Adam turns float noise in it into a harmless drift.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from rlhf_assets_tests.support import entrypoint_cmd, kill_once_written, make_pairs, subprocess_env, write_jsonl

TIMEOUT = 240


def _summary(proc_stdout: str) -> dict:
    return json.loads(proc_stdout.strip().splitlines()[-1])


def _weights_sha(summary: dict) -> str:
    return hashlib.sha256((Path(summary["artifact_uri"]) / "model.safetensors").read_bytes()).hexdigest()


def _manifest(summary: dict) -> dict:
    return json.loads((Path(summary["artifact_uri"]) / "manifest.json").read_text())


def test_kill_9_then_rerun_resumes_to_identical_weights(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(16, seed=2))
    # 40 pairs / batch 4 = 10 steps per epoch, 4 epochs = 40 steps; last.ckpt every 3 steps (mid-epoch).
    args = ["train", "--preset", "tiny", "--pairs", str(train), "--val-pairs", str(val), "--epochs", "4",
            "--batch-size", "4", "--max-length", "64", "--checkpoint-every-n-steps", "3", "--no-progress"]
    env = subprocess_env()
    ref = subprocess.Popen(entrypoint_cmd(*args, "--out", str(tmp_path / "ref"), "--store", str(tmp_path / "s1")),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    crash_cmd = entrypoint_cmd(*args, "--out", str(tmp_path / "crash"), "--store", str(tmp_path / "s2"))
    last = tmp_path / "crash" / "checkpoints" / "last.ckpt"
    kill_once_written(crash_cmd, last, env, TIMEOUT)
    assert not (tmp_path / "s2").exists()  # killed before it stored anything

    import torch

    step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    assert 0 < step < 40

    resumed = subprocess.run(crash_cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out, err = ref.communicate(timeout=TIMEOUT)
    assert ref.returncode == 0, err[-3000:]

    a, b = _summary(out), _summary(resumed.stdout)
    assert b["resumed_from_step"] == step and a["resumed_from_step"] is None
    assert a["global_step"] == b["global_step"] == 40
    assert _weights_sha(a) == _weights_sha(b)
    assert a["metrics"] == b["metrics"]
    if _manifest(a)["code_version"] == _manifest(b)["code_version"]:  # sources unchanged between the runs
        assert a["artifact_id"] == b["artifact_id"]


def test_ddp_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(48, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(16, seed=2))
    common = ["train", "--preset", "tiny", "--pairs", str(train), "--val-pairs", str(val), "--epochs", "2",
              "--max-length", "64", "--accelerator", "cpu", "--seed", "3", "--no-progress"]
    env = subprocess_env()
    single = subprocess.Popen(entrypoint_cmd(*common, "--batch-size", "8", "--out", str(tmp_path / "one"),
                                             "--store", str(tmp_path / "s1")),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ddp = subprocess.run(entrypoint_cmd(*common, "--batch-size", "4", "--devices", "2", "--strategy", "ddp",
                                        "--out", str(tmp_path / "ddp"), "--store", str(tmp_path / "s2")),
                         capture_output=True, text=True, env=env, timeout=TIMEOUT)
    out, err = single.communicate(timeout=TIMEOUT)
    assert single.returncode == 0, err[-3000:]
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert len(ddp.stdout.strip().splitlines()) == 1  # only rank 0 prints the summary
    one, two = _summary(out), _summary(ddp.stdout)
    assert _manifest(two)["run"]["world_size"] == 2 and _manifest(one)["run"]["world_size"] == 1
    assert one["global_step"] == two["global_step"] == 12  # 48 pairs / global batch 8 × 2 epochs
    m1, m2 = one["metrics"], two["metrics"]
    assert m1["val_accuracy"] == m2["val_accuracy"] >= 0.9
    assert abs(m1["val_log_loss"] - m2["val_log_loss"]) <= 1e-5
    assert abs(m1["val_loss_best"] - m2["val_loss_best"]) <= 1e-5
    assert abs(m1["train_log_loss"] - m2["train_log_loss"]) <= 1e-5
