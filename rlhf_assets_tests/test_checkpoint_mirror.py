"""Checkpoints mirrored to the storage root (rlhf_assets/checkpoint_mirror.py): what a retried Kubernetes pod, with an
empty disk, resumes from.

Quick: push/restore on a local root and on S3 (moto's server on loopback), a half-finished push (files, no pointer)
is never restored, a corrupt object is refused, old versions are pruned, bad keys refused. Slow (real training in
subprocesses, tiny presets): SFT and the reward model are killed with SIGKILL after their first mirrored checkpoint,
their work directory is deleted, and the same command resumes from the storage root.
"""


import json
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from rlhf_assets.checkpoint_mirror import POINTER, CheckpointMirror, check_key
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.training import (
    REWARD_TRAIN,
    TRAINING_RETRY_POLICY,
    WORK_DIR_ENV,
    TrainingLauncherResource,
    launch_training,
)
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.storage import Storage, StorageUnavailable
from rlhf_assets_tests.support import (
    entrypoint_cmd,
    kill_children_once,
    kill_once_written,
    learnable_pairs,
    make_pairs,
    policy_cmd,
    subprocess_env,
    write_jsonl,
)

KEY = "policy/r1/0123abcd4567"
FILES = ["run.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"]


def _write(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _push_and_restore(storage: Storage, tmp_path: Path) -> CheckpointMirror:
    work = tmp_path / "a"
    mirror = CheckpointMirror(storage, KEY, work)
    assert mirror.pointer() is None
    assert not CheckpointMirror(storage, KEY, tmp_path / "empty").restore(FILES)  # nothing mirrored yet
    _write(work, "run.json", b"run-1")
    _write(work, "checkpoints/last.ckpt", b"step-3")
    first = mirror.push([work / f for f in FILES])  # best.ckpt does not exist yet: left out
    assert set(first["files"]) == {"run.json", "checkpoints/last.ckpt"}
    _write(work, "checkpoints/best.ckpt", b"best-6")
    _write(work, "checkpoints/last.ckpt", b"step-6")
    second = mirror.push([work / f for f in FILES])
    assert second["files"]["run.json"] == first["files"]["run.json"]  # unchanged: not uploaded again

    fresh = tmp_path / "b"  # a new pod: empty disk, same key
    assert CheckpointMirror(storage, KEY, fresh).restore(FILES)
    assert {f: (fresh / f).read_bytes() for f in FILES} == {"run.json": b"run-1", "checkpoints/best.ckpt": b"best-6",
                                                            "checkpoints/last.ckpt": b"step-6"}
    assert not CheckpointMirror(storage, KEY, fresh).restore(FILES)  # a local checkpoint wins: nothing downloaded
    return mirror


def test_a_fresh_work_directory_gets_the_last_pushed_checkpoint_on_a_local_root(tmp_path):
    storage = Storage(tmp_path / "store")
    mirror = _push_and_restore(storage, tmp_path)
    # only what the pointer names is kept: run.json of the first push, best and last of the second
    named = {entry["object"] for entry in mirror.pointer()["files"].values()}
    stored = {p.relative_to(mirror.remote).as_posix() for p in Path(mirror.remote).rglob("*") if p.is_file()}
    assert stored == named | {POINTER} and len(named) == 3


def test_a_half_finished_push_is_never_restored(tmp_path):
    storage = Storage(tmp_path / "store")
    work = tmp_path / "a"
    mirror = CheckpointMirror(storage, KEY, work)
    _write(work, "checkpoints/last.ckpt", b"step-3")
    mirror.push([work / "checkpoints/last.ckpt"])
    # a push killed before its pointer: the new version's file is there, the pointer still names the old one
    half = mirror.remote / "99999999999999999999-deadbeef" / "checkpoints" / "last.ckpt"
    half.parent.mkdir(parents=True)
    half.write_bytes(b"step-6, half written")
    fresh = tmp_path / "b"
    assert CheckpointMirror(storage, KEY, fresh).restore(["checkpoints/last.ckpt"])
    assert (fresh / "checkpoints/last.ckpt").read_bytes() == b"step-3"
    # the next push removes the leftover
    _write(work, "checkpoints/last.ckpt", b"step-9")
    mirror.push([work / "checkpoints/last.ckpt"])
    assert not half.parent.parent.exists()

    # files but no pointer at all (the very first push killed): nothing to resume from
    other = CheckpointMirror(storage, "policy/r1/ffffffffffff", tmp_path / "c")
    orphan = other.remote / "00000000000000000001-00000000" / "checkpoints" / "last.ckpt"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"step-3")
    assert other.pointer() is None and not other.restore(["checkpoints/last.ckpt"])
    assert not (tmp_path / "c" / "checkpoints" / "last.ckpt").exists()


def test_a_mirrored_file_that_does_not_match_its_hash_is_refused(tmp_path):
    storage = Storage(tmp_path / "store")
    work = tmp_path / "a"
    mirror = CheckpointMirror(storage, KEY, work)
    _write(work, "checkpoints/last.ckpt", b"step-3")
    pointer = mirror.push([work / "checkpoints/last.ckpt"])
    obj = mirror.remote.joinpath(*pointer["files"]["checkpoints/last.ckpt"]["object"].split("/"))
    obj.write_bytes(b"step-4")  # not what the pointer says
    fresh = tmp_path / "b"
    with pytest.raises(StorageUnavailable, match="does not match its sha256"):
        CheckpointMirror(storage, KEY, fresh).restore(["checkpoints/last.ckpt"])
    assert not (fresh / "checkpoints" / "last.ckpt").exists()
    assert not [p for p in (fresh / "checkpoints").iterdir()]  # no temporary left behind


@pytest.mark.parametrize("key", ["", "/abs/key", "a/../b", "a//b", "a/./b"])
def test_a_key_that_is_not_a_plain_relative_path_is_refused(key):
    with pytest.raises(ValueError, match="relative path"):
        check_key(key)


def test_push_and_restore_on_s3(s3_storage, tmp_path):
    storage, client, bucket = s3_storage
    _push_and_restore(storage, tmp_path)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert f"prefix/checkpoints/{KEY}/{POINTER}" in keys
    assert len(keys) == 4  # the pointer and the three objects it names: the replaced last.ckpt was deleted


# Real trainings killed and resumed on a fresh work directory ------------------------------------------------------


def _mirrored_step(store: Path, key: str, name: str, step_key: str) -> int:
    import torch

    remote = store / "checkpoints" / key
    entry = json.loads((remote / POINTER).read_text())["files"][name]
    return int(torch.load(remote / entry["object"], map_location="cpu", weights_only=True)[step_key])


@pytest.mark.slow
def test_sft_killed_then_rerun_on_an_empty_work_directory_resumes_from_the_storage_root(tmp_path):
    rows = [{"prompt": p["prompt"], "response": p["chosen"]} for p in learnable_pairs(96)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    store, out, key = tmp_path / "store", tmp_path / "out", "sft_policy/r1/0123abcd4567"
    config = tmp_path / "sft.json"  # 96 rows / 16 = 6 steps per epoch, 2 epochs; a checkpoint every 2 steps
    config.write_text(json.dumps({"epochs": 2, "batch_size": 16, "checkpoint_every": 2, "log_every": 1,
                                  "max_prompt_tokens": 24, "max_response_tokens": 16}))
    cmd = policy_cmd("sft", "--config", str(config), "--data", str(data), "--store", str(store), "--out", str(out),
                     "--checkpoint-key", key)
    env = subprocess_env()
    kill_once_written(cmd, store / "checkpoints" / key / POINTER, env)
    step = _mirrored_step(store, key, "checkpoints/last.pt", "step")
    assert 0 < step < 12
    shutil.rmtree(out)  # the retried pod's disk is empty

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from_step"] == step and summary["global_step"] == 12
    assert "restored the checkpoint mirrored at" in resumed.stderr
    assert _mirrored_step(store, key, "checkpoints/last.pt", "step") == 12  # the run went on mirroring


@pytest.mark.slow
def test_reward_model_killed_then_rerun_on_an_empty_work_directory_resumes_from_the_storage_root(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", make_pairs(16, seed=2))
    store, out, key = tmp_path / "store", tmp_path / "out", "reward_model/r1/0123abcd4567"
    # 40 pairs / batch 4 = 10 steps per epoch, 2 epochs; last.ckpt every 3 steps (mid-epoch)
    cmd = entrypoint_cmd("train", "--preset", "tiny", "--pairs", str(train), "--val-pairs", str(val), "--epochs", "2",
                         "--batch-size", "4", "--max-length", "64", "--checkpoint-every-n-steps", "3",
                         "--no-progress", "--store", str(store), "--out", str(out), "--checkpoint-key", key)
    env = subprocess_env()
    kill_once_written(cmd, store / "checkpoints" / key / POINTER, env)
    step = _mirrored_step(store, key, "checkpoints/last.ckpt", "global_step")
    assert 0 < step < 20
    shutil.rmtree(out)

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from_step"] == step and summary["global_step"] == 20
    pointer = json.loads((store / "checkpoints" / key / POINTER).read_text())
    assert set(pointer["files"]) == {"run.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"}


@pytest.mark.slow
def test_a_retried_step_on_an_empty_disk_resumes_from_the_checkpoint_mirrored_on_s3(s3_storage, tmp_path,
                                                                                    monkeypatch):
    """What a lost pod amounts to with an S3 root: the training process is killed (SIGKILL) after its first mirrored
    checkpoint, the retried step starts on an EMPTY work directory (a new pod on another node), and the entry point
    resumes from the checkpoint in the storage root (real Dagster run, real reward-model training, moto's S3)."""


    storage, client, bucket = s3_storage
    endpoint = storage.storage_options["endpoint_url"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path / "disk"))
    pairs = "".join(json.dumps(r) + "\n" for r in make_pairs(40, seed=1)).encode()
    val = "".join(json.dumps(r) + "\n" for r in make_pairs(16, seed=2)).encode()
    config = RMConfig(preset="tiny", epochs=2, batch_size=4, max_length=64, checkpoint_every_n_steps=3)
    reports, attempts = [], []

    def first_checkpoint_mirrored() -> bool:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="prefix/checkpoints/").get("Contents", [])
        return any(o["Key"].endswith("/" + POINTER) for o in listed)

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["r1"]),
              retry_policy=TRAINING_RETRY_POLICY._replace(delay=0))
    def trains(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource,
               storage: StorageResource):
        attempts.append(context.retry_number)
        if context.retry_number:  # a new pod: nothing of the last one's disk
            shutil.rmtree(tmp_path / "disk")
        run = launch_training(context, training_launcher, storage, REWARD_TRAIN, config, dataset_id="d1",
                              inputs={"--pairs": ("train.jsonl", pairs), "--val-pairs": ("val.jsonl", val)},
                              args=["--no-progress"])
        reports.append(run.reported)
        return dg.MaterializeResult()

    watcher, killed = kill_children_once(first_checkpoint_mirrored, REWARD_TRAIN.module, poll_s=0.05)
    result = dg.materialize([trains], partition_key="r1", raise_on_error=False,
                            resources={"training_launcher": TrainingLauncherResource(),
                                       "storage": StorageResource(root=storage.uri, s3_endpoint_url=endpoint)})
    watcher.join(timeout=5)
    assert killed, "the training ended before it could be killed"
    assert result.success
    assert attempts == [0, 1]
    (reported,) = reports
    assert reported["resumed_from_step"] > 0 and reported["global_step"] == 20
    mirrored = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="prefix/checkpoints/")["Contents"]]
    assert [k for k in mirrored if k.endswith(POINTER)] and all(k.startswith("prefix/checkpoints/trains/r1/")
                                                               for k in mirrored)


TWO_NODES = """
import sys
from pathlib import Path

import torch

from rlhf_assets.checkpoint_mirror import CheckpointMirror
from rlhf_assets.policy import distributed
from rlhf_assets.policy.runtime import load_checkpoint, save_checkpoint
from rlhf_assets.storage import Storage

with distributed.process_group():
    rank = distributed.rank()
    work = Path(sys.argv[1]) / f"node{rank}"  # each rank on its own disk, as on two nodes
    mirror = CheckpointMirror(Storage(sys.argv[2]), "policy/r1/0123abcd4567", work)
    path = work / "checkpoints" / "last.pt"
    state = load_checkpoint(path, mirror)
    save_checkpoint(path, {"step": state["step"] + 1}, mirror)
    print(f"rank {rank} resumed from step {state['step']}, has step "
          f"{torch.load(path, weights_only=True)['step']} locally", flush=True)
"""


@pytest.mark.slow
def test_every_rank_resumes_the_same_mirrored_checkpoint_and_only_rank_0_pushes(tmp_path):
    import socket
    import sys

    import torch

    store, key = tmp_path / "store", "policy/r1/0123abcd4567"
    seed = tmp_path / "seed"
    _write(seed, "checkpoints/last.pt", b"")
    torch.save({"step": 3}, seed / "checkpoints" / "last.pt")
    CheckpointMirror(Storage(store), key, seed).push([seed / "checkpoints" / "last.pt"])
    script = tmp_path / "resume.py"
    script.write_text(TWO_NODES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), str(script), str(tmp_path / "disks"), str(store)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(GLOO_SOCKET_IFNAME="lo"),
                       timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "rank 0 resumed from step 3, has step 4 locally" in r.stdout, r.stdout
    assert "rank 1 resumed from step 3, has step 3 locally" in r.stdout, r.stdout  # rank 0 alone writes
    assert _mirrored_step(store, key, "checkpoints/last.pt", "step") == 4  # and pushes


@pytest.mark.parametrize(("root", "mirrors"), [("s3://bucket/prefix", True), ("/data/rlhf", False), (".rlhf", False),
                                               ("file:///data/rlhf", False)])
def test_the_launcher_mirrors_checkpoints_unless_the_root_is_the_local_directory_of_the_work_dirs(root, mirrors):
    from rlhf_assets.defs.training import mirrors_checkpoints, run_key

    assert mirrors_checkpoints(root) is mirrors
    assert check_key(run_key("reward_model", "r1", "d1", {"lr": 1e-4})) == run_key("reward_model", "r1", "d1",
                                                                                    {"lr": 1e-4})


def test_a_push_during_an_outage_is_given_up_and_the_next_one_catches_up(s3_storage, moto_server, tmp_path):
    from rlhf_assets.storage import StorageSettings

    storage, _, _ = s3_storage
    storage.policy = StorageSettings(attempts=2, backoff_s=0.01, backoff_max_s=0.01, connect_timeout_s=0.5)
    work, said = tmp_path / "a", []
    mirror = CheckpointMirror(storage, KEY, work, log=said.append)
    _write(work, "checkpoints/last.ckpt", b"step-3")
    assert mirror.push(["checkpoints/last.ckpt"]) is not None
    moto_server.stop()
    _write(work, "checkpoints/last.ckpt", b"step-6")
    assert mirror.push(["checkpoints/last.ckpt"]) is None  # training goes on
    assert "checkpoint not mirrored" in said[-1] and "could not" in said[-1]
    moto_server.start()
    fresh = tmp_path / "b"
    assert CheckpointMirror(storage, KEY, fresh).restore(["checkpoints/last.ckpt"])
    assert (fresh / "checkpoints/last.ckpt").read_bytes() == b"step-3"  # the last complete push
    _write(work, "checkpoints/last.ckpt", b"step-9")
    mirror.push(["checkpoints/last.ckpt"])
    shutil.rmtree(fresh)
    assert CheckpointMirror(storage, KEY, fresh).restore(["checkpoints/last.ckpt"])
    assert (fresh / "checkpoints/last.ckpt").read_bytes() == b"step-9"
