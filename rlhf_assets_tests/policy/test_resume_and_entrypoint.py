"""kill -9 and rerun through the real entry point (tiny preset, CPU, one thread per process).

PPO: a run is SIGKILLed right after its first checkpoint (checkpoint_every=1, so after step 1 or 2); rerunning the
same command resumes from ``checkpoints/last.pt`` — policy + value head, optimizer, β, reward statistics, the
sampling generator, torch RNG, step, history, best checkpoint, the pre-update snapshot — and must end with
bit-identical weights and the same metrics as an uninterrupted run. SFT: the same with its own checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from rlhf_assets_tests.support import TINY_PPO, kill_once_written, policy_cmd, subprocess_env, write_jsonl

TIMEOUT = 300
TIMING_KEYS = ("rollout_tokens_per_s", "train_tokens_per_s", "tokens_per_s")


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _weights(summary: dict) -> str:
    return hashlib.sha256((Path(summary["artifact_uri"]) / "model.safetensors").read_bytes()).hexdigest()


def _metrics(out_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _crash_and_resume(args: list[str], tmp_path: Path) -> tuple[dict, dict, int]:
    env = subprocess_env()
    ref = subprocess.Popen(policy_cmd(*args, "--out", str(tmp_path / "ref")), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    crash_cmd = policy_cmd(*args, "--out", str(tmp_path / "crash"))
    checkpoint = tmp_path / "crash" / "checkpoints" / "last.pt"
    kill_once_written(crash_cmd, checkpoint, env, TIMEOUT)
    import torch

    step = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
    resumed = subprocess.run(crash_cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out, err = ref.communicate(timeout=TIMEOUT)
    assert ref.returncode == 0, err[-3000:]
    return _summary(out), _summary(resumed.stdout), step


def test_ppo_kill_9_then_rerun_resumes_to_identical_weights(tiny_setup, tmp_path):
    root = tiny_setup["root"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in tiny_setup["prompts"]])
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": p} for p in tiny_setup["eval_prompts"]])
    config = tmp_path / "ppo.json"
    config.write_text(json.dumps({**TINY_PPO, "steps": 6, "checkpoint_every": 1, "sft_mix_share": 0.25}))
    sft_data = write_jsonl(tmp_path / "sft.jsonl", tiny_setup["sft_rows"])
    args = ["ppo", "--config", str(config), "--sft", tiny_setup["sft_id"], "--reward-model", tiny_setup["rm_id"],
            "--prompts", str(prompts), "--eval-prompts", str(held), "--sft-data", str(sft_data),
            "--store", tiny_setup["store"]]
    assert root.exists()
    a, b, step = _crash_and_resume(args, tmp_path)
    assert 0 < step < 6
    assert a["resumed_from_step"] is None and b["resumed_from_step"] == step
    assert a["steps_run"] == b["steps_run"] == 6
    assert _weights(a) == _weights(b)
    assert a["selected"] == b["selected"] and a["selected_step"] == b["selected_step"]
    assert _metrics(tmp_path / "ref") == _metrics(tmp_path / "crash")
    assert a["artifact_id"] == b["artifact_id"]


def test_sft_kill_9_then_rerun_resumes_to_identical_weights(tiny_setup, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", tiny_setup["sft_rows"])
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"epochs": 2, "batch_size": 16, "checkpoint_every": 3, "log_every": 1,
                                  "max_prompt_tokens": 24, "max_response_tokens": 16}))
    args = ["sft", "--config", str(config), "--data", str(data), "--store", str(tmp_path / "store")]
    a, b, step = _crash_and_resume(args, tmp_path)
    assert 0 < step < 30 and b["resumed_from_step"] == step
    assert _weights(a) == _weights(b) and a["metrics"] == b["metrics"]
    assert _metrics(tmp_path / "ref") == _metrics(tmp_path / "crash")


def test_entrypoint_reports_bad_input_with_exit_code_2(tiny_setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\nnot json\n')
    env = subprocess_env()
    r = subprocess.run(policy_cmd("ppo", "--sft", tiny_setup["sft_id"], "--reward-model", tiny_setup["rm_id"],
                                  "--prompts", str(bad), "--eval-prompts", str(bad), "--out", str(tmp_path / "o"),
                                  "--store", tiny_setup["store"]), capture_output=True, text=True, env=env,
                       timeout=TIMEOUT)
    assert r.returncode == 2 and "bad.jsonl:2: not JSON" in r.stderr
    r = subprocess.run(policy_cmd("ppo", "--sft", "deadbeefdeadbeef", "--reward-model", tiny_setup["rm_id"],
                                  "--prompts", str(bad), "--eval-prompts", str(bad), "--out", str(tmp_path / "o"),
                                  "--store", tiny_setup["store"]), capture_output=True, text=True, env=env,
                       timeout=TIMEOUT)
    assert r.returncode == 2 and "no artifact" in r.stderr
