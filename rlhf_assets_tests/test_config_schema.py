"""One config source per trainer: the Dagster config, the entry-point flags and the config-file loader are generated
from the settings dataclass, so they have its fields, defaults and docs and cannot drift from it."""

import argparse
import dataclasses
import json
from typing import Annotated

import pytest
from pydantic import Field

from rlhf_assets.config_schema import FileConfig, add_flags, load, schema, settings
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.policy import entrypoint as policy_entrypoint
from rlhf_assets.policy.config import PPOConfig, SFTConfig
from rlhf_assets.policy.kl_check import KLCheckSettings
from rlhf_assets.reward import entrypoint as reward_entrypoint
from rlhf_assets.reward.config import RMConfig
from rlhf_assets.training_process import build_parser


def _dagster_configs():
    from rlhf_assets.defs.data.aggregated_labels import AggregationConfig
    from rlhf_assets.defs.data.validated_pairs import ValidationConfig
    from rlhf_assets.defs.policy.ppo_policy import PPOPolicyConfig
    from rlhf_assets.defs.policy.sft_policy import SFTPolicyConfig
    from rlhf_assets.defs.release.deployment_decision import DeploymentDecisionConfig
    from rlhf_assets.defs.release.ope_report import OPEReportConfig
    from rlhf_assets.defs.resources import ReleaseThresholdsResource
    from rlhf_assets.defs.reward.judge_reward_model import JUDGE_SEED, JudgeRewardModelConfig
    from rlhf_assets.defs.reward.preference_dataset import PreferenceDatasetConfig
    from rlhf_assets.defs.reward.reward_model import RewardModelConfig
    from rlhf_assets.defs.reward.rm_calibration import CalibrationConfig
    from rlhf_assets.evaluation.gates import DecisionSettings
    from rlhf_assets.evaluation.release_ope import OPESettings
    from rlhf_assets.evaluation.thresholds import ReleaseThresholds
    from rlhf_assets.preference.labels import AggregationSettings
    from rlhf_assets.preference.snapshot import SnapshotSettings
    from rlhf_assets.preference.validation import ValidationRules
    from rlhf_assets.reward.calibrate_release import CalibrationSettings

    return [  # (generated Dagster class, its sources, fields the asset sets itself, default overrides)
        (RewardModelConfig, (RMConfig,), (), {}),
        (JudgeRewardModelConfig, (RMConfig,), (), {"seed": JUDGE_SEED}),
        (SFTPolicyConfig, (SFTConfig,), (), {}),
        (PPOPolicyConfig, (PPOConfig, KLCheckSettings), (), {}),
        (CalibrationConfig, (CalibrationSettings,), (), {}),
        (OPEReportConfig, (OPESettings,), (), {}),
        (DeploymentDecisionConfig, (DecisionSettings,), (), {}),
        (PreferenceDatasetConfig, (SnapshotSettings,), (), {}),
        (AggregationConfig, (AggregationSettings,), ("out_of_core_bytes", "batch_rows"), {}),
        (ValidationConfig, (ValidationRules,), ("day",), {}),
        (ReleaseThresholdsResource, (ReleaseThresholds,), (), {}),
    ]


def _default(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("index", range(11))
def test_generated_dagster_config_has_every_field_default_and_description(index):
    generated, sources, excluded, overrides = _dagster_configs()[index]
    expected = {name: info for source in sources for name, info in schema(source).items() if name not in excluded}
    fields = generated.model_fields
    assert list(fields) == list(expected), generated.__name__
    for name, info in expected.items():
        assert fields[name].default == _default(overrides.get(name, info.default)), (generated.__name__, name)
        assert info.description, f"{sources} field {name!r} has no docstring"
        assert fields[name].description == info.description
    # and back: the Launchpad's defaults give exactly the dataclass defaults
    for source in sources:
        back = settings_from(generated(), source, **({"day": None} if "day" in excluded else {}))
        assert back == source(**{k: v for k, v in overrides.items() if k in schema(source)})


def test_the_launchpad_schema_carries_descriptions_and_defaults():
    """What the UI renders: Dagster's own config schema of the asset, not just the pydantic model."""
    from rlhf_assets.definitions import defs

    node = defs().resolve_assets_def("ppo_policy").node_def
    fields = node.config_schema.config_type.fields
    assert set(fields) == {*schema(PPOConfig), *schema(KLCheckSettings)}
    assert fields["clip_coef"].default_value == 0.2 and "CleanRL" in fields["clip_coef"].description
    assert fields["on_kl_over_budget"].default_value == "reject"


@pytest.mark.parametrize("module, command, cls", [
    (reward_entrypoint, "train", RMConfig), (policy_entrypoint, "sft", SFTConfig),
    (policy_entrypoint, "ppo", PPOConfig)])
def test_entry_point_flags_are_the_dataclass_fields(module, command, cls):
    parser = build_parser("x", "x", module.COMMANDS)
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = {a.dest: a for a in sub._actions if a.dest in schema(cls)}
    assert set(flags) == set(schema(cls))
    for name, info in schema(cls).items():
        action = flags[name]
        assert action.option_strings == ["--" + name.replace("_", "-")] + (
            ["--no-" + name.replace("_", "-")] if isinstance(action, argparse.BooleanOptionalAction) else [])
        assert action.default is argparse.SUPPRESS  # a flag left out keeps the --config file's value
        assert info.description.replace("%", "%%") in action.help and repr(info.default) in action.help


def test_flags_override_the_config_file_and_bad_values_name_the_field(tmp_path):
    cfg_file = tmp_path / "ppo.json"
    cfg_file.write_text(json.dumps({"steps": 7, "clip_coef": 0.3, "norm_adv": True}))
    parser = build_parser("policy", "x", policy_entrypoint.COMMANDS)
    base = ["ppo", "--out", "o", "--sft", "s", "--reward-model", "r", "--prompts", "p", "--eval-prompts", "e"]
    args = parser.parse_args([*base, "--config", str(cfg_file), "--clip-coef", "0.1", "--no-norm-adv", "--lr", "none"])
    cfg = load(PPOConfig, args.config, args)
    assert (cfg.steps, cfg.clip_coef, cfg.norm_adv, cfg.lr) == (7, 0.1, False, None)
    args = parser.parse_args([*base, "--update-epochs", "0"])
    with pytest.raises(ValueError, match="PPOConfig.update_epochs=0: Input should be greater than or equal to 1"):
        load(PPOConfig, None, args)
    cfg_file.write_text(json.dumps({"clip_range": 0.3}))  # the old, non-CleanRL name is refused by name
    with pytest.raises(ValueError, match="unknown ppo config key.*clip_range is now clip_coef"):
        load(PPOConfig, cfg_file, None)


def test_entry_point_reports_a_bad_flag_value_with_exit_2(tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("")
    rc = reward_entrypoint.main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--devices", "2"])
    assert rc == 2 and "strategy" in capsys.readouterr().err


def test_adding_a_knob_is_one_edit():
    """A field added to a settings dataclass appears in the Dagster config, the flags and the file loader."""

    @settings
    class Knobs(FileConfig):
        steps: Annotated[int, Field(ge=1)] = 3
        """How many."""
        new_knob: float = 0.5
        """A knob added today."""

    generated = config_class("KnobsConfig", Knobs)
    assert generated.model_fields["new_knob"].default == 0.5
    assert generated.model_fields["new_knob"].description == "A knob added today."
    parser = argparse.ArgumentParser()
    add_flags(parser, Knobs)
    assert load(Knobs, None, parser.parse_args(["--new-knob", "0.25"])).new_knob == 0.25
    assert Knobs.from_dict({"new_knob": 1.5}).new_knob == 1.5
    with pytest.raises(ValueError, match="steps"):
        generated(steps=0)  # the Launchpad validates the same range


def test_validation_is_one_style_for_every_trainer():
    """Strict types (no silent coercion), finite numbers, named fields — the same for the three configs."""
    for cls, field in ((RMConfig, "batch_size"), (SFTConfig, "batch_size"), (PPOConfig, "steps")):
        for bad in ("3", 3.0, True, 0):
            with pytest.raises(ValueError, match=field):
                cls(**{field: bad})
        with pytest.raises(ValueError, match="lr"):
            cls(lr=float("nan"))
        assert dataclasses.replace(cls(), seed=5).seed == 5


def test_the_three_servers_default_to_different_ports():
    """A laptop runs the loop's servers side by side: `rlhf serve`, `rlhf serve-policy` and `rlhf annotate` with no
    --port must not collide."""
    from rlhf_assets.annotation.settings import AppSettings
    from rlhf_assets.policy_serving.settings import PolicyServeSettings
    from rlhf_assets.serving.settings import ServeSettings

    ports = {cls.__name__: cls().port for cls in (ServeSettings, PolicyServeSettings, AppSettings)}
    assert len(set(ports.values())) == len(ports), ports
