"""The kl_within_budget measurement (policy/kl_check.py): a drifted policy is measured far from its reference, the
reference itself at exactly 0, and the numbers are seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_assets.evaluation.evidence import outcome
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.policy.artifacts import load_policy, save_policy
from rlhf_assets.policy.kl_check import measure_kl
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.storage import Storage

#: PPO's sampling settings as its artifact records them (train_config).
SAMPLING = {"temperature": 1.0, "max_new_tokens": 12, "max_prompt_tokens": 24}
BUDGET = 0.5


def _store(setup) -> tuple[Storage, ArtifactStore]:
    storage = Storage(setup["store"])
    return storage, ArtifactStore(storage)


@pytest.fixture(scope="module")
def drifted_id(tiny_setup, tmp_path_factory):
    """The SFT reference's weights with Gaussian noise added, stored as a ppo_policy artifact."""
    model, tok, _ = load_policy(tiny_setup["sft_dir"])
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.lm.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    payload = save_policy(model, tok, "ppo", SAMPLING, tmp_path_factory.mktemp("drifted") / "payload")
    _, store = _store(tiny_setup)
    return store.put_dir(payload, kind="ppo_policy", manifest={"kind": "ppo_policy", "note": "drifted"}).id


def _measure(setup, policy_id, **kw):
    storage, _ = _store(setup)
    args = {"n_prompts": 24, "seed": 5, "n_boot": 200} | kw
    return measure_kl(storage, policy_id, setup["sft_id"], setup["eval_prompts"], **args)


def test_drifted_policy_is_over_a_small_budget(tiny_setup, drifted_id):
    kl = _measure(tiny_setup, drifted_id)
    limit = ReleaseThresholds().kl_limit(BUDGET)
    assert kl["n_prompts"] == 24 and kl["samples"] == 24 and kl["seed"] == 5
    assert kl["temperature"] == SAMPLING["temperature"] and kl["max_new_tokens"] == SAMPLING["max_new_tokens"]
    assert kl["value"] > 4 * limit                     # well above the budget, not a borderline call
    assert kl["ci_low"] <= kl["value"] <= kl["ci_high"]
    assert outcome(kl["ci_low"], kl["ci_high"], limit, "<=") == "fail"
    q = kl["quantiles"]
    assert q["q0"] <= q["q5"] <= q["q50"] <= q["q95"] <= q["q100"]


def test_reference_against_itself_is_exactly_zero(tiny_setup):
    kl = _measure(tiny_setup, tiny_setup["sft_id"], samples_per_prompt=2, **SAMPLING)
    assert kl["samples"] == 48
    assert kl["value"] == 0.0 and kl["ci_low"] == 0.0 and kl["ci_high"] == 0.0
    assert kl["quantiles"]["q0"] == kl["quantiles"]["q100"] == 0.0  # every single sample, not just the mean
    assert outcome(kl["ci_low"], kl["ci_high"], BUDGET, "<=") == "pass"


def test_measurement_is_seeded(tiny_setup, drifted_id):
    first, again = _measure(tiny_setup, drifted_id), _measure(tiny_setup, drifted_id)
    assert first == again
    other = _measure(tiny_setup, drifted_id, seed=6)
    assert other["value"] != first["value"]            # the seed drives the sampling: fresh responses


def test_temperature_is_the_one_sampled_at(tiny_setup, drifted_id):
    """The log-probs are those of softmax(logits / T): a different T is a different distribution, hence KL."""
    hot = _measure(tiny_setup, drifted_id, temperature=2.0)
    assert hot["temperature"] == 2.0
    assert not np.isclose(hot["value"], _measure(tiny_setup, drifted_id)["value"])


def test_missing_sampling_settings_are_an_error(tiny_setup):
    # The SFT artifact's train_config has no PPO sampling temperature: nothing is guessed.
    with pytest.raises(ValueError, match="temperature"):
        _measure(tiny_setup, tiny_setup["sft_id"])
