"""RMConfig: defaults, validation messages, files and overrides."""

import json

import pytest

from rlhf_assets.reward.config import RMConfig


def test_defaults_and_resolution():
    cfg = RMConfig()
    assert (cfg.max_length, cfg.batch_size, cfg.epochs, cfg.max_steps, cfg.accumulate_grad_batches) == (256, 16, 1, -1, 1)
    assert cfg.gradient_clip_val == 1.0 and cfg.use_soft_targets and cfg.use_weights and cfg.center_coef == 0.0
    assert RMConfig(preset="small").effective_lr == 2e-5
    resolved = RMConfig(accelerator="cpu").resolved()
    assert resolved.precision == "32-true" and resolved.deterministic is True and resolved.lr == 1e-3
    d = RMConfig(accelerator="cpu").to_dict()
    assert d["precision"] == "32-true" and d["lr"] == 1e-3 and json.dumps(d)


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "huge"}, "preset"),
    ({"preset": "hf"}, "model_path"),
    ({"max_length": 4}, "max_length"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": -1.0}, "lr"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"strategy": "deepspeed"}, "strategy"),
    ({"devices": 2}, "strategy"),
    ({"precision": "fp8"}, "precision"),
    ({"max_steps": 0}, "max_steps"),
    ({"val_check_interval": 0}, "val_check_interval"),
    ({"use_weights": "yes"}, "use_weights"),
])
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMConfig(**kwargs)


def test_from_file_json_and_yaml_and_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"preset": "tiny-decoder", "batch_size": 4, "margin": 0.1}))
    (tmp_path / "c.yaml").write_text("preset: tiny\nmax_length: 64\nadam_betas: [0.9, 0.95]\n")
    a = RMConfig.from_file(tmp_path / "c.json")
    assert (a.preset, a.batch_size, a.margin) == ("tiny-decoder", 4, 0.1)
    b = RMConfig.from_file(tmp_path / "c.yaml")
    assert b.max_length == 64 and b.adam_betas == (0.9, 0.95)
    c = b.with_overrides(epochs=3, seed=None)
    assert c.epochs == 3 and c.seed == 0 and b.epochs == 1
    with pytest.raises(ValueError, match="unknown"):
        b.with_overrides(colour="red")


def test_bad_files_say_which_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        RMConfig.from_file(tmp_path / "bad.json")
    (tmp_path / "unknown.json").write_text(json.dumps({"batch": 3}))
    with pytest.raises(ValueError, match="unknown.json.*unknown reward-model config key"):
        RMConfig.from_file(tmp_path / "unknown.json")
    (tmp_path / "invalid.yaml").write_text("batch_size: -3\n")
    with pytest.raises(ValueError, match="invalid.yaml.*batch_size"):
        RMConfig.from_file(tmp_path / "invalid.yaml")
