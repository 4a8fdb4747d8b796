"""Sequence-level off-policy evaluation with the tiny policies (the ``tiny_setup`` fixture).

The known-truth check: the behaviour policy is the tiny SFT policy sampled at temperature 1.0; the target is the
SAME policy served at temperature 1.2 — a different distribution over responses whose log-probabilities are known
exactly (log-softmax(logits / 1.2)) and whose true value is measured on-policy, by sampling the target and scoring
its responses with the same calibrated reward. The tiny SFT policy is weak (most samples at T = 1 are word salad
scored about −7.9; the few coherent polite answers score far higher), so hotter sampling is worse.

Measured (this set-up, 600 logged responses = 3 × 200 held-out prompts, log seeds 0/1/2, 3,000-sample truths):

- on-policy truth: T=1.0 −7.31 ± 0.06, T=1.2 −7.60 ± 0.04, T=0.9 −7.08 ± 0.07, T=0.3 −6.11 ± 0.20 (600 samples).
- target T=1.2, SNIS: −7.64 / −7.61 / −7.62 (95% CI ≈ ±0.15), ESS 503 / 507 / 499 of 600 (≈ 84%),
  k̂ 0.22 / 0.29 / 0.19; the paired uplift over the logged mean, −0.19 / −0.30 / −0.23, has its whole CI below 0
  (truth −0.29). SNDR (2 target samples per prompt): −7.72 / −7.64 / −7.62.
- target T=0.9, SNIS: −7.29 / −6.99 / −7.20, ESS 444–499, k̂ 0.30–0.43 (reliable; uplift CI above 0).
- target T=0.3: SNIS +4.3 / +7.4 / +8.1 against a truth of −6.1 — ESS 3–11 of 600, k̂ 3.6–4.6 — refused.

Tolerance of the truth check: 0.3 for SNIS, about 3 standard errors of (estimate − truth) (SNIS ≈ 0.075 from its
CI, an 800-sample truth ≈ 0.08), and 0.45 for SNDR (its 400 target samples add ≈ 0.115).
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from rlhf_assets_tests.support import learnable_pairs

N_PROMPTS, PER_PROMPT, MAX_PROMPT, MAX_NEW = 200, 3, 24, 16


@pytest.fixture(scope="module")
def ope(tiny_setup):
    """The SFT policy loaded once, the calibrated reward, 200 held-out prompts and a 600-response log at T = 1."""
    from rlhf_assets.evaluation.logged import simulate_log
    from rlhf_assets.policy.artifacts import load_policy
    from rlhf_assets.policy.reward_fn import ProxyReward
    from rlhf_assets.reward.artifact import load_reward_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reward = ProxyReward(load_reward_model(tiny_setup["rm_dir"]))
    model, tok, _ = load_policy(tiny_setup["sft_dir"])
    prompts = [p["prompt"] for p in learnable_pairs(N_PROMPTS, start=1000)]
    log = simulate_log(tiny_setup["sft_dir"], reward, prompts, samples_per_prompt=PER_PROMPT,
                       max_prompt_tokens=MAX_PROMPT, max_new_tokens=MAX_NEW, temperature=1.0, seed=0)
    yield {"reward": reward, "model": model, "tok": tok, "prompts": prompts, "log": log, "setup": tiny_setup}
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ the log


def test_simulated_log_schema_and_recorded_logprobs(ope):
    from rlhf_assets.evaluation.logged import LOG_SCHEMA, validate_log
    from rlhf_assets.policy.inference import teacher_forced_logprobs

    log = ope["log"]
    assert log.height == N_PROMPTS * PER_PROMPT
    assert list(log.columns) == list(LOG_SCHEMA) and validate_log(log).equals(log)
    assert log["policy_id"].unique().to_list() == [ope["setup"]["sft_id"]]  # the registry artifact id
    assert log["human_label"].null_count() == log.height
    assert log["temperature"].unique().to_list() == [1.0] and log["max_new_tokens"].unique().to_list() == [MAX_NEW]
    assert log["response_token_ids"].list.len().max() <= MAX_NEW
    assert log["prompt_token_ids"].list.len().max() <= MAX_PROMPT

    # Recorded log-probs = a teacher-forced rescoring by the same policy, batched differently (other padding).
    rows = log.head(40)
    rescored = teacher_forced_logprobs(ope["model"], rows["prompt_token_ids"].to_list(),
                                       rows["response_token_ids"].to_list(), ope["tok"].pad_token_id, batch_size=7)
    for recorded, again in zip(rows["behavior_token_logprobs"].to_list(), rescored):
        np.testing.assert_allclose(recorded, again, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rows["behavior_logprob"], [lp.sum() for lp in rescored], atol=1e-4, rtol=0)

    # The logged reward is the calibrated RM score without the EOS penalty (ProxyReward.raw).
    again = ope["reward"].raw(rows["prompt"].to_list(), rows["response"].to_list())
    np.testing.assert_allclose(rows["reward"], again, atol=1e-5, rtol=0)


def test_recorded_logprobs_are_those_of_the_tempered_distribution_sampled_from(ope):
    """At T = 0.7 each recorded token log-prob equals log-softmax(logits / 0.7) of a separate, unpadded forward
    pass over the prompt and the response so far — the distribution ``sample`` drew that token from."""
    from rlhf_assets.evaluation.logged import simulate_log

    T = 0.7
    log = simulate_log((ope["model"], ope["tok"]), ope["reward"], ope["prompts"][:3], max_prompt_tokens=MAX_PROMPT,
                       max_new_tokens=8, temperature=T, seed=5)
    assert log["temperature"].unique().to_list() == [T]
    model, gaps = ope["model"], []
    with torch.no_grad():
        for p_ids, r_ids, recorded in log.select("prompt_token_ids", "response_token_ids",
                                                 "behavior_token_logprobs").iter_rows():
            for j, token in enumerate(r_ids):
                ids = torch.tensor([p_ids + r_ids[:j]])
                logits, _ = model(ids, torch.ones_like(ids), with_values=False)
                tempered = torch.log_softmax(logits[0, -1].float() / T, -1)[token].item()
                untempered = torch.log_softmax(logits[0, -1].float(), -1)[token].item()
                assert recorded[j] == pytest.approx(tempered, abs=1e-5)
                gaps.append(abs(recorded[j] - untempered))
    assert np.mean(gaps) > 0.1  # the temperature is not ignored


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.drop("reward"), "lacks column"),
    (lambda d: d.with_columns(pl.lit(None, pl.Float64).alias("reward")), "null"),
    (lambda d: d.with_columns(pl.col("behavior_token_logprobs").list.head(1)), "one log-prob per response token"),
    (lambda d: d.with_columns(pl.col("behavior_logprob") - 1.0), "sum"),
    (lambda d: d.with_columns(pl.col("behavior_token_logprobs").list.eval(-pl.element())), "finite log-prob"),
    (lambda d: d.with_columns(pl.lit(float("nan")).alias("reward")), "'reward' must be finite"),
    (lambda d: d.with_columns(pl.lit(0.0).alias("temperature")), "temperature"),
    (lambda d: d.with_columns(pl.lit(1).alias("max_new_tokens")), "max_new_tokens"),
    (lambda d: d.head(1), "at least 2"),
])
def test_validate_log_names_the_problem(ope, corrupt, message):
    from rlhf_assets.evaluation.logged import validate_log

    with pytest.raises(ValueError, match=message):
        validate_log(corrupt(ope["log"].head(6)))


# --------------------------------------------------------------------------------------------- the estimates


def test_behaviour_as_target_gives_unit_weights(ope):
    """Target = behaviour (the SFT policy at the logged temperature): every log-weight is 0, ESS = n, the
    estimate is the mean logged reward and the uplift is 0."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    log, setup = ope["log"], ope["setup"]
    rep = evaluate_target(log, setup["sft_dir"], estimator="snis", n_boot=200, target_temperature=1.0)
    assert np.all(np.asarray(rep["log_weights"]) == 0.0)
    assert rep["ess"] == pytest.approx(log.height, rel=1e-12)
    assert rep["pareto_k"] is None  # −inf: no tail at all
    assert rep["reliable"] and rep["reason"] is None
    assert rep["target"]["value"] == pytest.approx(float(log["reward"].mean()), rel=1e-12)
    assert rep["uplift"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert rep["uplift"]["ci_low"] == pytest.approx(0.0, abs=1e-9) and rep["uplift"]["ci_high"] == pytest.approx(
        0.0, abs=1e-9)
    assert rep["target_policy_id"] == setup["sft_id"] and rep["behavior_policy_ids"] == [setup["sft_id"]]
    json.dumps(rep, allow_nan=False)  # JSON-safe as it stands: materialization metadata


def test_hotter_target_matches_its_on_policy_truth(ope):
    """Target = the SFT policy at T = 1.2 (behaviour: T = 1.0). Its true value comes from 800 on-policy samples
    scored by the same reward; SNIS and SNDR must land within the tolerance (module docstring), the weights must be
    judged reliable, and the paired uplift must see that the target is worse than the behaviour policy."""
    from rlhf_assets.evaluation.logged import simulate_log
    from rlhf_assets.evaluation.sequence_ope import evaluate_target, markdown_report, weights_histogram_png

    T, log, target = 1.2, ope["log"], (ope["model"], ope["tok"])
    truth = float(simulate_log(target, ope["reward"], ope["prompts"], samples_per_prompt=4,
                               max_prompt_tokens=MAX_PROMPT, max_new_tokens=MAX_NEW, temperature=T,
                               seed=99)["reward"].mean())
    snis = evaluate_target(log, target, estimator="snis", target_temperature=T, n_boot=500)
    assert snis["reliable"], snis["reason"]
    assert snis["ess_share"] > 0.6 and snis["pareto_k"] < 0.5
    assert abs(snis["target"]["value"] - truth) < 0.3, (snis["target"]["value"], truth)
    assert snis["uplift"]["ci_high"] < 0.0  # hotter sampling of this weak policy is worse, and the log shows it

    sndr = evaluate_target(log, target, ope["reward"], estimator="sndr", target_temperature=T, n_boot=200,
                           dm_samples=2)
    assert abs(sndr["target"]["value"] - truth) < 0.45, (sndr["target"]["value"], truth)
    assert sndr["direct_method"]["n_prompts"] == N_PROMPTS and sndr["direct_method"]["samples_per_prompt"] == 2
    # q̂ = the logged reward, so SNDR is the direct method (module docstring of sequence_ope)
    assert sndr["target"]["value"] == pytest.approx(sndr["direct_method"]["value"], abs=1e-9)
    assert sndr["snis_value"] == pytest.approx(snis["target"]["value"], abs=1e-12)

    md = markdown_report(sndr)
    assert "**Reliable**" in md and "| target value (sndr) |" in md and "uplift" in md and "ESS" in md
    assert weights_histogram_png(sndr["log_weights"]).startswith(b"\x89PNG")


def test_far_target_is_marked_unreliable(ope):
    """T = 0.3 puts almost all its mass where the T = 1 log has almost none: the SNIS value is nonsense (about +4
    against a truth of about −6) and the report refuses it, with the reason."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target, markdown_report, weights_histogram_png

    rep = evaluate_target(ope["log"], (ope["model"], ope["tok"]), estimator="snis", target_temperature=0.3,
                          n_boot=200)
    assert not rep["reliable"] and not rep["uplift"]["reliable"]
    assert "pareto k̂" in rep["reason"] and "ESS" in rep["reason"]
    assert rep["pareto_k"] > 0.7 and rep["ess_share"] < 0.1
    md = markdown_report(rep)
    assert "UNRELIABLE" in md and rep["reason"] in md
    assert weights_histogram_png(rep["log_weights"], ess=rep["ess"], pareto_k_hat=rep["pareto_k"]).startswith(
        b"\x89PNG")


def test_a_target_with_another_tokenizer_is_refused(ope):
    from rlhf_assets.evaluation.sequence_ope import check_same_tokenizer, target_logprobs
    from rlhf_assets.reward.artifact import load_reward_model

    other = load_reward_model(ope["setup"]["rm_dir"]).tokenizer  # WordPiece, not the policy's BPE
    with pytest.raises(ValueError, match="share a tokenizer"):
        target_logprobs((ope["model"], other), ope["log"].head(8))
    with pytest.raises(ValueError, match="share a tokenizer"):
        check_same_tokenizer(ope["tok"], other)
    check_same_tokenizer(ope["tok"], ope["tok"])


def test_doubly_robust_needs_the_reward_model(ope):
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    with pytest.raises(ValueError, match="dm_samples"):
        evaluate_target(ope["log"].head(30), (ope["model"], ope["tok"]), None, estimator="sndr")
    with pytest.raises(ValueError, match="unknown estimator"):
        evaluate_target(ope["log"].head(30), (ope["model"], ope["tok"]), estimator="magic")


def test_histogram_and_report_are_well_formed_for_constant_weights(ope):
    from rlhf_assets.evaluation.sequence_ope import weights_histogram_png

    assert weights_histogram_png(np.zeros(50)).startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        weights_histogram_png([math.nan, 0.0])
