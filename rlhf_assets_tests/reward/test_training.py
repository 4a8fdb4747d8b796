"""End to end on the tiny presets: training learns a trivially learnable preference, the artifact is
safetensors-only and loads back, `rm eval` prints its JSON, and Dagster Pipes gets the materialization."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rlhf_assets.reward import entrypoint
from rlhf_assets.reward.artifact import load_reward_model
from rlhf_assets.reward.evaluate import evaluate_pairs, score_pairs
from rlhf_assets.training_process import pipes
from rlhf_assets_tests.support import entrypoint_cmd, make_pairs, subprocess_env, write_jsonl

EVAL_KEYS = {"n", "accuracy", "auc", "ece", "log_loss"}


class FakePipes:
    """Stands in for dagster_pipes' PipesContext; validates metadata with dagster_pipes' own normaliser."""

    def __init__(self):
        import logging

        self.logs: list[str] = []
        self.materializations: list[dict] = []
        self.log = logging.getLogger("fake-pipes")
        self.log.info = self.logs.append  # type: ignore[method-assign]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def report_asset_materialization(self, metadata=None, data_version=None, asset_key=None):
        from dagster_pipes import _normalize_param_metadata

        _normalize_param_metadata(metadata, "report_asset_materialization", "metadata")
        json.dumps(metadata, allow_nan=False)
        self.materializations.append({"metadata": metadata, "data_version": data_version})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the entry point, in-process, with a fake Dagster Pipes context."""
    import torch

    tmp = tmp_path_factory.mktemp("rm")
    train = write_jsonl(tmp / "train.jsonl", make_pairs(40, seed=1))
    val = write_jsonl(tmp / "val.jsonl", make_pairs(16, seed=2))
    pipes = FakePipes()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        mp.setenv("DAGSTER_PIPES_CONTEXT", "fake")
        mp.delenv("RANK", raising=False)
        mp.delenv("LOCAL_RANK", raising=False)
        import dagster_pipes

        mp.setattr(dagster_pipes, "open_dagster_pipes", lambda: pipes)
        import io
        from contextlib import redirect_stdout

        out = io.StringIO()
        with redirect_stdout(out):
            rc = entrypoint.main(["train", "--preset", "tiny", "--pairs", str(train), "--val-pairs", str(val),
                                  "--out", str(tmp / "work"), "--store", str(tmp / "store"), "--epochs", "3",
                                  "--batch-size", "8", "--max-length", "64", "--seed", "0",
                                  "--dataset-id", "ds-test", "--parent", "p" * 64])
        torch.set_num_threads(threads)
    assert rc == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"summary": summary, "pipes": pipes, "tmp": tmp, "train": train, "val": val}


@pytest.mark.slow
def test_tiny_model_learns_the_synthetic_preference(trained):
    s = trained["summary"]
    assert s["metrics"]["val_accuracy"] >= 0.9, s
    assert s["metrics"]["val_auc"] >= 0.9
    assert s["n_truncated"] == 0 and s["global_step"] == 15  # 40 pairs / 8 per step × 3 epochs
    assert len(s["artifact_id"]) == 64


@pytest.mark.slow
def test_artifact_is_safetensors_only_and_loads_back(trained):
    s = trained["summary"]
    d = Path(s["artifact_uri"])
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert {"model.safetensors", "config.json", "manifest.json", "tokenizer/tokenizer.json"} <= set(files)
    assert not [f for f in files if f.endswith((".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"))]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["kind"] == "reward_model" and manifest["dataset_id"] == "ds-test"
    assert manifest["parent_ids"] == ["p" * 64] and manifest["n_truncated"] == 0 and manifest["seed"] == 0
    assert manifest["config"]["preset"] == "tiny" and manifest["code_version"]
    assert manifest["metrics"]["val_accuracy"] == s["metrics"]["val_accuracy"]
    assert {f["path"] for f in manifest["files"]} == set(files) - {"manifest.json"}
    scorer = load_reward_model(d)
    assert scorer.kind == "encoder"
    margins = score_pairs(scorer, trained["val"])
    assert (margins > 0).mean() >= 0.9
    result = evaluate_pairs(scorer, trained["val"])
    assert set(result) == EVAL_KEYS and result["n"] == 16
    assert result["accuracy"] == pytest.approx(s["metrics"]["val_accuracy"])
    assert result["log_loss"] == pytest.approx(s["metrics"]["val_log_loss"], abs=1e-6)
    # prompt may be empty
    r = evaluate_pairs(scorer, [{"prompt": "", "chosen": "it is good", "rejected": "it is bad"}])
    assert r["n"] == 1


@pytest.mark.slow
def test_pipes_gets_logs_and_one_materialization(trained):
    pipes = trained["pipes"]
    assert any("validation" in line for line in pipes.logs) and any("artifact" in line for line in pipes.logs)
    [mat] = pipes.materializations
    meta = mat["metadata"]
    assert mat["data_version"] == trained["summary"]["artifact_id"]
    assert meta["artifact_id"]["raw_value"] == trained["summary"]["artifact_id"]
    assert meta["val_accuracy"] == {"raw_value": trained["summary"]["metrics"]["val_accuracy"], "type": "float"}
    assert meta["n_truncated"] == {"raw_value": 0, "type": "int"} and meta["dataset_id"]["raw_value"] == "ds-test"
    assert meta["tokens_per_s"]["type"] == "float" and meta["wall_time_s"]["raw_value"] > 0


@pytest.mark.slow
def test_rm_eval_cli_prints_json(trained):
    tmp = trained["tmp"]
    proc = subprocess.run(entrypoint_cmd("eval", "--model", "latest", "--store", str(tmp / "store"), "--pairs",
                                         str(trained["val"]), "--json"),
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == EVAL_KEYS and result["n"] == 16
    assert result["accuracy"] == pytest.approx(trained["summary"]["metrics"]["val_accuracy"])


@pytest.mark.slow
def test_rm_eval_errors_are_clear(trained, capsys):
    tmp = trained["tmp"]
    rc = entrypoint.main(["eval", "--model", "0123456789", "--store", str(tmp / "store"), "--pairs",
                          str(trained["val"])])
    assert rc == 2 and "no artifact" in capsys.readouterr().err


@pytest.mark.slow
def test_rerun_of_a_finished_run_is_idempotent(trained, capsys):
    """Rerunning the same command resumes from the final last.ckpt: no training, the same artifact id."""
    tmp = trained["tmp"]
    args = ["train", "--preset", "tiny", "--pairs", str(trained["train"]), "--val-pairs", str(trained["val"]),
            "--out", str(tmp / "work"), "--store", str(tmp / "store"), "--epochs", "3", "--batch-size", "8",
            "--max-length", "64", "--dataset-id", "ds-test", "--parent", "p" * 64]
    assert entrypoint.main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["artifact_id"] == trained["summary"]["artifact_id"] and again["resumed_from_step"] == 15
    # a different config in the same work dir is refused, with what changed
    assert entrypoint.main(args[:-6] + ["--lr", "0.5"] + args[-6:]) == 2
    assert "config.lr" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_decoder_trains_and_loads(tmp_path, pairs_files):
    from rlhf_assets.reward.config import RMConfig
    from rlhf_assets.reward.train import train_reward_model

    train, val = pairs_files
    cfg = RMConfig(preset="tiny-decoder", max_length=64, batch_size=8, epochs=2)
    result = train_reward_model(cfg, train, val, tmp_path / "w", store_root=str(tmp_path / "s"), progress=False)
    assert result.metrics["val_accuracy"] >= 0.9
    scorer = load_reward_model(result.artifact_dir)
    assert scorer.kind == "decoder"
    assert evaluate_pairs(scorer, val)["accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    assert np.isfinite(score_pairs(scorer, val)).all()


def test_pipes_opens_only_on_rank_zero(monkeypatch):
    import dagster_pipes

    opened = []
    monkeypatch.setattr(dagster_pipes, "open_dagster_pipes", lambda: opened.append(1) or FakePipes())
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "fake")
    for rank_env, expect in (({"LOCAL_RANK": "1"}, None), ({"RANK": "3", "LOCAL_RANK": "0"}, None),
                             ({"RANK": "0", "LOCAL_RANK": "0"}, FakePipes), ({}, FakePipes)):
        monkeypatch.delenv("RANK", raising=False)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        for k, v in rank_env.items():
            monkeypatch.setenv(k, v)
        with pipes() as context:
            assert (context is None) if expect is None else isinstance(context, expect)
    assert len(opened) == 2
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT")
    with pipes() as context:
        assert context is None


def test_holdout_split_without_val_pairs(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", make_pairs(25, seed=4))
    train, val = entrypoint.split_holdout(src, tmp_path / "out", seed=0)
    t, v = train.read_text().splitlines(), val.read_text().splitlines()
    assert len(v) == 2 and len(t) == 23 and not set(t) & set(v)
    assert entrypoint.split_holdout(src, tmp_path / "out2", seed=0)[1].read_text().splitlines() == v


def test_evaluate_orients_soft_targets_below_one_half():
    class Fake:
        def score(self, prompts, responses, batch_size=32):
            return np.array([1.0 if "good" in r else -1.0 for r in responses])

    pairs = [{"prompt": "", "chosen": "good", "rejected": "bad"},
             {"prompt": "", "chosen": "bad", "rejected": "good", "target": 0.2}]
    assert score_pairs(Fake(), pairs).tolist() == [2.0, -2.0]
    assert evaluate_pairs(Fake(), pairs)["accuracy"] == 1.0
