"""The policy on N processes: torchrun with gloo on CPU against one process (tiny preset, one thread each).

- PPO on 2 processes, each sampling half of every rollout, ends where 1 process ends: the same per-step KL, reward,
  losses, grad norm and β within TOL_METRIC, the same last weights within TOL_WEIGHT per parameter, one summary
  line (rank 0's).
- kill -9 of ONE rank after the first checkpoint brings the run down (torchrun stops the rest); the same command on
  ONE process resumes from the checkpoint the two wrote and finishes where the uninterrupted run did.
- SFT: one process killed after its first checkpoint, the rerun on TWO processes resumes and finishes where an
  uninterrupted one-process run did (its steps after the checkpoint ran split over two ranks).

Why tolerances and not bit-identity: the arithmetic is the same (sampling randomness per prompt and position, every
statistic global, every loss the one-process loss), but float32 sums come out in another order — a rank forwards
half the rows in a narrower padding (other matmul blockings), a micro-batch's mean is the sum of two ranks' shares,
DDP adds two half-gradients. That is ~1e-7 relative per operation; measured after 3 PPO steps (lr 1e-3, weights of
magnitude up to 1): largest per-parameter difference 1.0e-6, per-step metrics within 1e-6 (sampled responses and
rewards identical). TOL_WEIGHT is 10× that, TOL_METRIC 100×. Errors in the arithmetic fail at step 1 (tried while
writing this: the loss without the ×N for DDP's average — the grad norm halves; the draws seeded by a rank's own
positions — other responses, another reward). A sampled token could in principle flip where a probability differs
in its last bits at the draw's boundary: the comparisons would then fail loudly, not pass.
"""

from __future__ import annotations

import contextlib
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

from rlhf_assets.policy import distributed
from rlhf_assets.policy.config import PPOConfig, SFTConfig
from rlhf_assets.policy.data import collate, left_pad
from rlhf_assets.policy.generation import sample
from rlhf_assets.policy.model import tiny_lm, tiny_tokenizer
from rlhf_assets.policy.ppo import train_ppo
from rlhf_assets.policy.sft import train_sft
from rlhf_assets_tests.support import TINY_PPO, policy_cmd, subprocess_env, write_jsonl

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


def torchrun_cmd(n: int, *args: str, standalone: bool = False) -> list[str]:
    """The entry point under torchrun: ``--standalone`` as the Kubernetes launcher runs it in a pod (c10d
    rendezvous on a free port it picks), or a static rendezvous on a free loopback port."""
    where = (["--standalone"] if standalone else
             ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--monitor-interval", "0.2"])
    return [sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(n),
            "-m", "rlhf_assets.policy.entrypoint", *args]


def _env(**extra: str) -> dict:
    return subprocess_env(GLOO_SOCKET_IFNAME="lo", **extra)


def _pipes_env(messages: Path) -> dict[str, str]:
    """What a Dagster Pipes session gives the process it launches (context inline, messages to a file)."""
    from dagster_pipes import encode_param

    context = {"asset_keys": ["ppo_policy"], "code_version_by_asset_key": None, "provenance_by_asset_key": None,
               "partition_key": None, "partition_key_range": None, "partition_time_window": None, "run_id": "r1",
               "job_name": None, "retry_number": 0, "extras": {}}
    return {"DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
            "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)})}


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=TIMEOUT)
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
        if "response_length" in ra:  # the same draws: the same responses, so lengths are equal, not close
            assert (ra["response_length"], ra["no_eos_share"]) == (rb["response_length"], rb["no_eos_share"])
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


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ppo_one_process(tiny_setup, ppo_args):
    """The reference: one process, in this one (what the entry point runs without torchrun)."""
    d, _ = ppo_args
    with _one_thread():
        r = train_ppo(PPOConfig(**PPO), tiny_setup["sft_dir"], tiny_setup["rm_dir"], tiny_setup["prompts"],
                      tiny_setup["eval_prompts"], d / "one", sft_rows=tiny_setup["sft_rows"],
                      store_root=tiny_setup["store"], store=False)
    return d / "one", {"steps_run": len(r.history), "selected_step": r.selected_step, "selected": r.selected}


@pytest.mark.slow
def test_ppo_on_two_processes_matches_one(ppo_args, ppo_one_process):
    d, args = ppo_args
    one, s1 = ppo_one_process
    messages = d / "pipes.jsonl"  # under Dagster Pipes, as the asset launches it: rank 0 alone reports
    s2 = _summary(_run(torchrun_cmd(2, *args, "--out", str(d / "two"), standalone=True),
                       **_pipes_env(messages)).stdout)
    methods = [json.loads(line)["method"] for line in messages.read_text().splitlines()]
    assert methods.count("opened") == methods.count("closed") == 1
    assert methods.count("report_asset_materialization") == 1 and "log" in methods
    assert s1["steps_run"] == s2["steps_run"] == PPO["steps"]
    _assert_same_metrics(one, d / "two")
    assert _max_weight_difference(one, d / "two") < TOL_WEIGHT
    assert s2["selected_step"] == s1["selected_step"]
    assert s2["selected"]["kl"] == pytest.approx(s1["selected"]["kl"], rel=TOL_METRIC, abs=TOL_METRIC)
    # the checkpoint does not depend on N: same keys, same optimizer layout
    assert _checkpoint(one).keys() == _checkpoint(d / "two").keys()


@pytest.mark.slow
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


@pytest.mark.slow
def test_sft_killed_on_one_process_resumes_on_two(tiny_setup, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", tiny_setup["sft_rows"])
    config = tmp_path / "sft.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 16, "max_steps": 6, "checkpoint_every": 2,
                                  "log_every": 1, "max_prompt_tokens": 24, "max_response_tokens": 16}))
    args = ["sft", "--config", str(config), "--data", str(data), "--store", str(tmp_path / "store")]
    with _one_thread():
        ref = train_sft(SFTConfig.from_dict(json.loads(config.read_text())), tiny_setup["sft_rows"],
                        tmp_path / "one", store_root=str(tmp_path / "store"))
    out = tmp_path / "crash"
    step = _kill_after_first_checkpoint(policy_cmd(*args, "--out", str(out)), out, rank=None)
    assert 0 < step < 6
    resumed = _summary(_run(torchrun_cmd(2, *args, "--out", str(out))).stdout)
    assert resumed["resumed_from_step"] == step and resumed["global_step"] == ref.global_step == 6
    _assert_same_metrics(tmp_path / "one", out)
    assert _max_weight_difference(tmp_path / "one", out) < TOL_WEIGHT
    assert resumed["metrics"]["train_nll"] == pytest.approx(ref.metrics["train_nll"], rel=TOL_METRIC)


DISAGREEING_CHECKPOINTS = """
import sys
from pathlib import Path

import torch

from rlhf_assets.policy import distributed
from rlhf_assets.policy.runtime import load_checkpoint

with distributed.process_group():
    path = Path(sys.argv[1]) / f"rank{distributed.rank()}" / "last.pt"  # not one directory: as --out on local disks
    if distributed.rank() == 0:
        path.parent.mkdir(parents=True)
        torch.save({"step": 3}, path)
    try:
        load_checkpoint(path)
    except ValueError as exc:
        print(f"rank {distributed.rank()}: {exc}", flush=True)
        sys.exit(2)
"""


@pytest.mark.slow
def test_ranks_that_see_different_checkpoints_stop_with_a_clear_error(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(DISAGREEING_CHECKPOINTS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: the processes disagree on the checkpoint" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "--out must be on storage every process sees" in r.stdout


# the pieces (quick) ---------------------------------------------------------------------------------------------


def test_shards_cover_the_rows_once_and_a_rank_without_rows_weighs_nothing():
    rows = list(range(10))
    parts = [distributed.shard(rows, 4, r) for r in range(4)]
    assert torch.cat([p for p, _ in parts]).tolist() == rows and all(w == 1.0 for _, w in parts)
    few = [distributed.shard([7, 8], 3, r) for r in range(3)]
    assert [(p.tolist(), w) for p, w in few] == [([7], 1.0), ([8], 1.0), ([7], 0.0)]  # a stand-in row, weight 0
    assert distributed.shard(rows)[0].tolist() == rows and not distributed.active()  # one process: all of them


def test_a_rollout_that_does_not_split_equally_is_refused():
    distributed.require_equal_shares(16, "rollout_prompts", 2)
    with pytest.raises(ValueError, match=r"rollout_prompts=15 must be a multiple of the number of processes \(2\)"):
        distributed.require_equal_shares(15, "rollout_prompts", 2)


def _texts(s) -> list[list[int]]:
    return [[t for t, keep in zip(ids, m) if keep] for ids, m in zip(s.response_ids.tolist(),
                                                                     s.response_mask.tolist())]


def test_a_prompt_draws_the_same_response_in_whichever_batch_it_is_sampled():
    tok = tiny_tokenizer()
    lm = tiny_lm(tok, hidden=32, layers=1, seed=3).eval()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in
               ("hello there", "a much longer prompt than the first one, with more words", "hi", "how are you")]

    def draw(a: int, b: int):
        gens = [torch.Generator().manual_seed(1000 + j) for j in range(a, b)]  # one per position, as PPO's
        return _texts(sample(lm, *left_pad(prompts[a:b], tok.pad_token_id), 10, tok.eos_token_id, tok.pad_token_id,
                             gens))

    whole = draw(0, 4)
    assert whole == draw(0, 2) + draw(2, 4)  # 1 × all == 2 × half, though the halves are padded differently
    assert len({tuple(r) for r in whole}) == 4
    with pytest.raises(ValueError, match="3 generators for 4 rows"):
        sample(lm, *left_pad(prompts, tok.pad_token_id), 2, 0, 0, [torch.Generator()] * 3)


def test_a_widened_batch_is_the_rows_of_a_wider_one():
    a, b = ([5, 6], [7, 8, 9]), ([1, 2, 3, 4], [3])
    wide = collate([a[0], b[0]], [a[1], b[1]], pad_id=0)
    alone = collate([a[0]], [a[1]], pad_id=0).widened(wide.prompt_len, wide.response_mask.shape[1], pad_id=0)
    row = wide.rows(slice(0, 1))
    for x, y in ((alone.input_ids, row.input_ids), (alone.attention_mask, row.attention_mask),
                 (alone.response_mask, row.response_mask)):
        assert torch.equal(x, y)
    assert alone.prompt_len == wide.prompt_len
    with pytest.raises(ValueError, match="only be widened"):
        wide.widened(1, 1, 0)
