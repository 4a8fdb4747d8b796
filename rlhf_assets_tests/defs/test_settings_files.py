"""The settings files the definitions read at load time: $RLHF_RELEASE_THRESHOLDS and $RLHF_AUTOMATION_CONFIG
(runs launched by sensors take no run config, so a deployment sets these in files)."""

import json

import pytest

from rlhf_assets.defs.resources import (
    AUTOMATION_CONFIG_ENV,
    RELEASE_THRESHOLDS_ENV,
    automation_resource_from_env,
    release_thresholds_from_env,
)
from rlhf_assets.evaluation.thresholds import ReleaseThresholds


def test_release_thresholds_come_from_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(RELEASE_THRESHOLDS_ENV, raising=False)
    assert release_thresholds_from_env().thresholds() == ReleaseThresholds()
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"max_style_flip_rate": 0.3}))
    monkeypatch.setenv(RELEASE_THRESHOLDS_ENV, str(path))
    got = release_thresholds_from_env().thresholds()
    assert got.max_style_flip_rate == 0.3
    assert got.max_length_drift == ReleaseThresholds().max_length_drift  # the rest keep their defaults


def test_the_definitions_use_the_file(tmp_path, monkeypatch):
    path = tmp_path / "thresholds.yaml"
    path.write_text("max_style_flip_rate: 0.25\n")
    monkeypatch.setenv(RELEASE_THRESHOLDS_ENV, str(path))
    from rlhf_assets.definitions import defs

    resource = defs().resources["release_thresholds"]
    assert resource.thresholds().max_style_flip_rate == 0.25


@pytest.mark.parametrize(("content", "message"), [
    ({"max_style_flip_rate": 0.3, "max_flip": 0.2}, "unknown release threshold setting(s) max_flip"),
    ({"max_style_flip_rate": 1.5}, "max_style_flip_rate"),
])
def test_a_bad_thresholds_file_is_refused_by_name(tmp_path, monkeypatch, content, message):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(content))
    monkeypatch.setenv(RELEASE_THRESHOLDS_ENV, str(path))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        release_thresholds_from_env()


def test_a_bad_automation_file_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "automation.json"
    path.write_text(json.dumps({"window": 200, "windw": 3}))
    monkeypatch.setenv(AUTOMATION_CONFIG_ENV, str(path))
    with pytest.raises(ValueError, match="unknown automation setting"):
        automation_resource_from_env()
