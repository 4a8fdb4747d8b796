"""Off-policy estimates from logs of several behaviour policies (multiple importance sampling), and doubly robust
estimates whose outcome is a human label.

The set-up (tiny policies, as in test_sequence_ope.py): production = the tiny SFT policy at T = 1.0, 900 rows
(300 prompts × 3); the target = the SAME policy served at T = 0.5, which a production-only log cannot measure
(PSIS k̂ 1.4–1.8, ESS < 3%); the canary = the target itself, serving 10% of the log (100 rows, every third
prompt). Against the mixture q = 0.9·π_prod + 0.1·π_target the target's weights are π_t / q ≤ 1/0.1 = 10.

Measured (log seeds 0/1/2/3, the canary's 100/101/102/103): MIS SNIS −4.82 / −5.00 / −6.05 / −5.80, k̂ ≈ −4
(weights bounded: no tail), ESS 11.1–11.5% of n (the floor is 10%: ESS ≈ the canary's share plus what production
covers); the on-policy truth −5.47 ± 0.19 (900 samples); the production-only SNIS of the same target refused with
k̂ 1.43–1.79. The reward is bimodal (sd ≈ 5.6), so the MIS estimate, resting on ≈ 115 effective rows, has a
standard error of ≈ 0.5: TOL = 1.6 is ≈ 3 standard errors of (estimate − truth). Production's value is ≈ −7.4,
so the uplift (truth ≈ +1.9) has its whole CI above 0 (lower bound 0.71–1.60).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from rlhf_assets_tests.support import learnable_pairs

N_PROMPTS, PER_PROMPT, MAX_PROMPT, MAX_NEW = 300, 3, 24, 16
T_TARGET, CANARY = 0.5, "canary-sft-t0.5"
TOL = 1.6


@pytest.fixture(scope="module")
def mis(tiny_setup):
    """Production log (T = 1), canary rows (T = 0.5, 10% of the mixed log), the target's on-policy truth, and the
    target's MIS report on the mixed log (``report``)."""
    from rlhf_assets.evaluation.logged import simulate_log
    from rlhf_assets.evaluation.sequence_ope import evaluate_target
    from rlhf_assets.policy.artifacts import load_policy
    from rlhf_assets.policy.reward_fn import ProxyReward
    from rlhf_assets.reward.artifact import load_reward_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reward = ProxyReward(load_reward_model(tiny_setup["rm_dir"]))
    model, tok, _ = load_policy(tiny_setup["sft_dir"])
    policy = (model, tok)
    prompts = [p["prompt"] for p in learnable_pairs(N_PROMPTS, start=1000)]
    common = {"max_prompt_tokens": MAX_PROMPT, "max_new_tokens": MAX_NEW}
    prod = simulate_log(policy, reward, prompts, samples_per_prompt=PER_PROMPT, temperature=1.0, seed=0,
                        policy_id=tiny_setup["sft_id"], **common)
    canary = simulate_log(policy, reward, prompts[::3], temperature=T_TARGET, seed=100, policy_id=CANARY, **common)
    truth = simulate_log(policy, reward, prompts, samples_per_prompt=3, temperature=T_TARGET, seed=99, **common)
    mixed = pl.concat([prod, canary])
    report = evaluate_target(mixed, policy, estimator="snis", target_temperature=T_TARGET, n_boot=500,
                             behaviors={tiny_setup["sft_id"]: policy, CANARY: policy},
                             baseline_policy_id=tiny_setup["sft_id"])
    yield {"reward": reward, "policy": policy, "prod": prod, "canary": canary, "mixed": mixed, "report": report,
           "truth": float(truth["reward"].mean()), "prod_id": tiny_setup["sft_id"]}
    torch.set_num_threads(threads)


def _behaviors(mis):
    return {mis["prod_id"]: mis["policy"], CANARY: mis["policy"]}


# --------------------------------------------------------------------------------------- numpy-level pieces


def test_mixture_logprob_is_the_balance_heuristic_density():
    from rlhf_assets.evaluation.ope import mixture_logprob

    p = np.array([[0.2, 0.6], [0.01, 0.5], [0.3, 0.0001]])  # π_j(y_i) for 3 rows, 2 policies
    s = np.array([0.9, 0.1])
    lq = mixture_logprob(np.log(p), s)
    np.testing.assert_allclose(np.exp(lq), p @ s, rtol=1e-12)
    # a target equal to policy 1 has weights π_1 / q ≤ 1 / s_1, at -5000 nats as well
    assert np.all(np.exp(np.log(p[:, 1]) - lq) <= 1 / s[1] + 1e-12)
    np.testing.assert_allclose(mixture_logprob(np.log(p) - 5000.0, s), lq - 5000.0, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="sum to 1"):
        mixture_logprob(np.log(p), [0.5, 0.6])
    with pytest.raises(ValueError, match="2 shares for 3"):
        mixture_logprob(np.log(np.c_[p, p[:, :1]]), s)


def test_uplift_against_a_weighted_baseline():
    from rlhf_assets.evaluation.ope import uplift

    rng = np.random.default_rng(0)
    lp, r = rng.normal(-40, 3, 800).clip(max=-1), rng.random(800)
    plain = uplift(lp + 0.1 * r, lp, r, estimator="snis", n_boot=200)
    zero = uplift(lp + 0.1 * r, lp, r, estimator="snis", n_boot=200, baseline_log_w=np.zeros(800))
    assert zero.behavior_value == pytest.approx(plain.behavior_value, abs=1e-12)  # unit weights: the plain mean
    assert (zero.ci_low, zero.ci_high) == pytest.approx((plain.ci_low, plain.ci_high), abs=1e-12)
    bw = 0.5 * (r - 0.5)  # a baseline that also likes high rewards
    same = uplift(lp + bw, lp, r, estimator="snis", n_boot=200, baseline_log_w=bw)
    assert same.behavior_value == pytest.approx(same.target.value, abs=1e-12) and same.behavior_value > r.mean()
    assert same.value == pytest.approx(0.0, abs=1e-12) and same.ci_high - same.ci_low < 1e-12  # paired


def test_linear_outcome_map():
    from rlhf_assets.evaluation.ope import linear_outcome_map

    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    m = linear_outcome_map(x, 3.0 - 2.0 * x + rng.normal(scale=0.1, size=500))
    assert m["slope"] == pytest.approx(-2.0, abs=0.02) and m["intercept"] == pytest.approx(3.0, abs=0.02)
    assert m["r2"] > 0.99 and m["n"] == 500
    flat = linear_outcome_map(np.ones(5), [1.0, 2.0, 3.0, 4.0, 5.0])
    assert flat["slope"] == 0.0 and flat["intercept"] == 3.0


# --------------------------------------------------------------------------------------- the tiny policies


@pytest.mark.slow
def test_a_canary_share_makes_a_refused_target_measurable(mis):
    """The target refused on the production-only log is estimated reliably, and near its on-policy truth, from the
    log where it served 10% of the rows itself; its weights stay ≤ 1/share; the uplift is against production."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    prod_only = evaluate_target(mis["prod"], mis["policy"], estimator="snis", target_temperature=T_TARGET,
                                n_boot=0)
    assert not prod_only["reliable"] and prod_only["pareto_k"] > 0.7, prod_only["reason"]

    rep = mis["report"]  # evaluate_target(mixed log, behaviors={production, canary}, baseline_policy_id=production)
    assert rep["reliable"], rep["reason"]
    assert rep["pareto_k"] is None or rep["pareto_k"] <= 0.7
    assert abs(rep["target"]["value"] - mis["truth"]) < TOL, (rep["target"]["value"], mis["truth"])

    m = rep["mis"]
    assert m["shares"] == {mis["prod_id"]: 0.9, CANARY: 0.1} and m["counts"][CANARY] == 100
    assert m["temperatures"] == {mis["prod_id"]: 1.0, CANARY: T_TARGET}
    assert m["own_logprob_check"]["ok"], m["own_logprob_check"]
    bound = 1.0 / m["shares"][CANARY]
    assert m["max_weight_bound"][CANARY] == pytest.approx(bound)
    assert rep["weights"]["max"] <= bound * (1 + 1e-9)
    assert np.exp(np.max(rep["log_weights"])) <= bound * (1 + 1e-9)
    assert rep["weights"]["max"] > 0.9 * bound  # canary rows the production policy would hardly say: ≈ 1/share

    # The uplift is against production's value: MIS over all rows, close to the mean of its own rows.
    b = rep["behavior"]
    assert b["policy_id"] == rep["baseline_policy_id"] == mis["prod_id"] and "mixture" in b["estimator"]
    prod_mean = float(mis["prod"]["reward"].mean())
    assert b["own_rows"] == {"value": pytest.approx(prod_mean), "n": 900}
    assert abs(b["value"] - prod_mean) < 0.3
    assert rep["uplift"]["value"] == pytest.approx(rep["target"]["value"] - b["value"])
    assert rep["uplift"]["ci_low"] > 0.0  # the colder target beats production, and the mixed log shows it


@pytest.mark.slow
def test_a_mixed_log_needs_its_behaviour_policies(mis):
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    log, target, prod_id = pl.concat([mis["prod"].head(10), mis["canary"].head(10)]), mis["policy"], mis["prod_id"]
    with pytest.raises(ValueError, match=f"mixes 2 behaviour policies.*{CANARY}.*behaviors="):
        evaluate_target(log, target, estimator="snis")
    with pytest.raises(ValueError, match=rf"\['{CANARY}'\] that `behaviors` does not map"):
        evaluate_target(log, target, estimator="snis", behaviors={prod_id: target}, baseline_policy_id=prod_id)
    with pytest.raises(ValueError, match="baseline_policy_id"):
        evaluate_target(log, target, estimator="snis", behaviors=_behaviors(mis))
    with pytest.raises(ValueError, match="'nobody' has no rows"):
        evaluate_target(log, target, estimator="snis", behaviors=_behaviors(mis), baseline_policy_id="nobody")
    with pytest.raises(ValueError, match="'nobody' has no rows"):
        evaluate_target(mis["prod"].head(10), target, estimator="snis", baseline_policy_id="nobody")


@pytest.mark.slow
def test_a_policy_that_does_not_reproduce_its_rows_makes_the_estimate_unreliable(mis):
    """The canary's rows claim T = 0.8 while they were sampled (and their log-probs logged) at T = 0.5: rescoring
    them disagrees with the log, so the mixture density is wrong and the report says which policy."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    canary = mis["canary"].head(30).with_columns(pl.lit(0.8).alias("temperature"))
    log = pl.concat([mis["prod"].head(60), canary])
    rep = evaluate_target(log, mis["policy"], estimator="snis", target_temperature=T_TARGET, n_boot=0,
                          behaviors=_behaviors(mis), baseline_policy_id=mis["prod_id"])
    check = rep["mis"]["own_logprob_check"]
    assert not check["ok"] and check["policies"][CANARY]["n_mismatched"] > 0
    assert check["policies"][mis["prod_id"]]["n_mismatched"] == 0
    assert not rep["reliable"] and f"policy '{CANARY}'" in rep["reason"]
    assert not rep["target"]["reliable"] and not rep["uplift"]["reliable"]


@pytest.mark.slow
def test_one_policy_given_as_behaviors_matches_the_logged_density(mis):
    """A one-policy log with ``behaviors``: teacher forcing reproduces the logged log-probs, so the estimate is the
    single-behaviour one (to float rounding); without ``behaviors`` the report has no MIS part."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    log, prod_id = mis["prod"].head(120), mis["prod_id"]
    plain = evaluate_target(log, mis["policy"], estimator="snis", target_temperature=1.2, n_boot=100)
    mixed = evaluate_target(log, mis["policy"], estimator="snis", target_temperature=1.2, n_boot=100,
                            behaviors={prod_id: mis["policy"]}, baseline_policy_id=prod_id)
    assert plain["mis"] is None and plain["baseline_policy_id"] == prod_id
    assert mixed["mis"]["shares"] == {prod_id: 1.0} and mixed["mis"]["own_logprob_check"]["ok"]
    np.testing.assert_allclose(mixed["log_weights"], plain["log_weights"], rtol=0, atol=1e-4)
    assert mixed["target"]["value"] == pytest.approx(plain["target"]["value"], abs=1e-4)
    assert mixed["behavior"]["value"] == pytest.approx(plain["behavior"]["value"], abs=1e-12)


# ------------------------------------------------------------------------------------------- human outcomes


def _with_human_labels(log: pl.DataFrame, seed: int, share: float = 0.6) -> pl.DataFrame:
    """Humans who disagree with the reward model: label = −reward + N(0, 0.5²) on a random share of the rows."""
    rng = np.random.default_rng(seed)
    r = log["reward"].to_numpy()
    h = np.where(rng.random(log.height) < share, -r + rng.normal(0.0, 0.5, log.height), np.nan)
    return log.with_columns(pl.Series("human_label", h).fill_nan(None))


@pytest.mark.slow
def test_the_human_outcome_estimate_tracks_the_humans_not_the_reward_model(mis):
    """On the mixed log with labels = −RM + noise on 60% of the rows, the human-outcome SNDR and SNIS of the target
    land near the human truth (−1 × the RM truth: the noise has mean 0), far from the RM's own value.

    The weights are the mixed log's (shares from ALL rows), restricted to the labelled ones. Their ESS share is
    ≈ the canary's share of the labelled rows, which scatters around the 10% floor (0.099–0.106 over log seeds
    0–3): reliability is asserted by the tail (k̂), not by that coin flip."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    log = _with_human_labels(mis["mixed"], seed=3)
    n_labelled = log["human_label"].is_not_null().sum()
    human_truth, rm_truth = -mis["truth"], mis["truth"]
    common = {"target_temperature": T_TARGET, "behaviors": _behaviors(mis), "baseline_policy_id": mis["prod_id"],
              "outcome": "human"}
    sndr = evaluate_target(log, mis["policy"], mis["reward"], estimator="sndr", n_boot=200, dm_samples=1, **common)
    snis = evaluate_target(log, mis["policy"], estimator="snis", n_boot=0, **common)
    labelled = log["human_label"].is_not_null().to_numpy()
    for rep in (sndr, snis):
        assert rep["outcome"] == "human" and rep["n"] == n_labelled and rep["n_log"] == log.height
        np.testing.assert_allclose(rep["log_weights"], np.asarray(mis["report"]["log_weights"])[labelled],
                                   rtol=0, atol=1e-9)
        assert rep["mis"]["shares"] == mis["report"]["mis"]["shares"]
        assert rep["pareto_k"] is None or rep["pareto_k"] <= 0.7
        assert abs(rep["target"]["value"] - human_truth) < TOL, (rep["target"]["value"], human_truth)
        assert abs(rep["target"]["value"] - rm_truth) > 6.0
    m = sndr["human"]["outcome_map"]
    assert m["slope"] == pytest.approx(-1.0, abs=0.05) and m["n"] == n_labelled
    # the direct method runs on the label's scale: the mapped RM value of the target, not the RM value
    dm = sndr["direct_method"]
    assert dm["value"] == pytest.approx(m["intercept"] + m["slope"] * dm["reward_scale_value"], rel=1e-9)
    assert abs(dm["reward_scale_value"] - rm_truth) < TOL
    # production's human value, and the uplift in human terms: production is better for these humans
    assert sndr["behavior"]["value"] == pytest.approx(-float(mis["prod"]["reward"].mean()), abs=0.4)
    assert sndr["uplift"]["ci_high"] < 0.0


@pytest.mark.slow
def test_human_outcome_on_a_one_policy_log(mis):
    """Target = the behaviour policy: unit weights, so the human value is the mean label of the labelled rows."""
    from rlhf_assets.evaluation.sequence_ope import evaluate_target

    log = _with_human_labels(mis["prod"].head(150), seed=4)
    labels = log["human_label"].drop_nulls()
    rep = evaluate_target(log, mis["policy"], estimator="snis", target_temperature=1.0, n_boot=100, outcome="human")
    assert rep["n"] == labels.len() < 150 and rep["mis"] is None
    assert rep["target"]["value"] == pytest.approx(float(labels.mean()), rel=1e-12)
    assert rep["behavior"]["value"] == pytest.approx(float(labels.mean()), rel=1e-12)
    assert rep["uplift"]["value"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="needs a human_label on at least 2 rows; the log has 0"):
        evaluate_target(mis["prod"].head(10), mis["policy"], estimator="snis", outcome="human")
    with pytest.raises(ValueError, match="unknown outcome"):
        evaluate_target(log, mis["policy"], estimator="snis", outcome="judge")


# ---------------------------------------------------------------------------------------------- serving logs


@pytest.mark.slow
def test_serving_log_adds_the_canary_rows_on_request(mis, tmp_path):
    from rlhf_assets.evaluation.release_ope import SERVING_LOGS, serving_log
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.storage import Storage

    storage = Storage(tmp_path / "root")
    prod_id = mis["prod_id"]
    old = mis["prod"].slice(10, 5).with_columns(pl.lit("an-old-policy").alias("policy_id"))
    storage.write_parquet(storage.path(SERVING_LOGS, "day1.parquet"), pl.concat([mis["prod"].head(6), old]))
    storage.write_parquet(storage.path(SERVING_LOGS, "day2.parquet"), mis["canary"].head(4))

    only = serving_log(storage, prod_id)
    assert only["policy_id"].unique().to_list() == [prod_id] and only.height == 6
    registry = Registry(storage)
    registry.set_alias("production", "r1", {"policy": prod_id}, action="promote", reason="test", actor="test")
    assert serving_log(storage, prod_id, include_canary=True).height == 6  # no canary alias: production only
    registry.set_alias("canary", "r2", {"policy": CANARY}, action="canary", reason="test", actor="test", share=0.1)
    assert serving_log(storage, prod_id).height == 6  # backward compatible: production only by default
    both = serving_log(storage, prod_id, include_canary=True)
    assert both.height == 10 and sorted(both["policy_id"].unique().to_list()) == sorted([prod_id, CANARY])
    assert serving_log(storage, "a-policy-that-never-served", include_canary=True) is None
