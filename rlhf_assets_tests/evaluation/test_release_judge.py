"""The release's OPE measured twice on one log: with the proxy (the reward model PPO optimised) and with an
independent judge (every logged response re-scored, the judge as the direct-method baseline), side by side.

Tiny policies (``tiny_setup``): behaviour = the SFT policy at T = 1, target = the same policy at T = 1.2, whose
proxy uplift is clearly non-zero (hotter sampling of this weak policy is worse; test_sequence_ope.py). A judge that
scores every response as minus the proxy must give the mirror image: the opposite uplift with the mirrored interval,
on the same importance weights — which can only happen if the judge's numbers come from the judge's scores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlhf_assets_tests.support import learnable_pairs

N_PROMPTS, PER_PROMPT, MAX_PROMPT, MAX_NEW, T = 48, 2, 24, 16, 1.2
OPE = {"target_temperature": T, "n_boot": 300, "dm_samples": 2, "seed": 3}


@pytest.fixture(scope="module")
def judged(tiny_setup):
    from rlhf_assets.evaluation.logged import simulate_log
    from rlhf_assets.evaluation.release_ope import proxy_and_judge
    from rlhf_assets.policy.artifacts import load_policy
    from rlhf_assets.policy.reward_fn import ProxyReward
    from rlhf_assets.reward.artifact import load_reward_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    proxy = ProxyReward(load_reward_model(tiny_setup["rm_dir"]))
    model, tok, _ = load_policy(tiny_setup["sft_dir"])
    prompts = [p["prompt"] for p in learnable_pairs(N_PROMPTS, start=2000)]
    log = simulate_log((model, tok), proxy, prompts, samples_per_prompt=PER_PROMPT, max_prompt_tokens=MAX_PROMPT,
                       max_new_tokens=MAX_NEW, seed=0)

    def inverse_judge(p, r):
        return -proxy.raw(p, r)

    report, judged_log, log_w = proxy_and_judge(log, (model, tok), proxy, inverse_judge, proxy_id="proxy-rm",
                                                judge_id="judge-rm", **OPE)
    alone, _, _ = proxy_and_judge(log, (model, tok), proxy, None, proxy_id="proxy-rm", **OPE)
    yield {"report": report, "log": log, "judged_log": judged_log, "log_w": log_w, "alone": alone}
    torch.set_num_threads(threads)


def test_an_inverse_judge_gives_the_opposite_uplift_on_the_same_log(judged):
    report, log, judged_log = judged["report"], judged["log"], judged["judged_log"]
    proxy, judge = report["proxy"], report["judge"]
    assert judge["measured"] and judge["reward_model_id"] == "judge-rm" and proxy["reward_model_id"] == "proxy-rm"
    p, j = proxy["uplift"], judge["uplift"]
    assert abs(p["value"]) > 0.05  # a real uplift to mirror
    assert np.sign(j["value"]) == -np.sign(p["value"])
    assert j["value"] == pytest.approx(-p["value"], abs=1e-9)
    # the same bootstrap rows and the same weights: the judge's interval is the proxy's, mirrored
    assert j["ci_low"] == pytest.approx(-p["ci_high"], abs=1e-9) and j["ci_high"] == pytest.approx(-p["ci_low"],
                                                                                                  abs=1e-9)
    assert judge["target"]["value"] == pytest.approx(-proxy["target"]["value"], abs=1e-9)
    # every logged response re-scored by the judge; the behaviour value is the mean judge score
    np.testing.assert_allclose(judged_log["judge_reward"], -log["reward"].to_numpy(), atol=1e-6, rtol=0)
    assert judge["behavior"]["value"] == pytest.approx(float(judged_log["judge_reward"].mean()), abs=1e-9)
    # the direct-method baseline is the judge's score of the same target samples
    assert judge["direct_method"]["value"] == pytest.approx(-proxy["direct_method"]["value"], abs=1e-9)
    assert judge["snis_value"] == pytest.approx(-proxy["snis_value"], abs=1e-9)
    assert judge["units"] != proxy["units"] and "raw Bradley–Terry" in judge["units"]
    # the logged proxy reward is untouched, and the proxy side is what it is without a judge
    assert judged_log["reward"].equals(log["reward"])
    assert report["uplift"] == p and report["target"] == proxy["target"]  # compatibility keys: the proxy's
    for key in ("target", "behavior", "uplift", "direct_method"):
        assert judged["alone"]["proxy"][key] == proxy[key]
    assert len(judged["log_w"]) == log.height and report["reliable"] is True
    json.dumps(report, allow_nan=False)


def test_markdown_shows_both_uplifts_labelled(judged):
    from rlhf_assets.evaluation.sequence_ope import markdown_report

    report = judged["report"]
    md = markdown_report(report)
    assert "| quantity | proxy (the reward model PPO optimised) | judge (held-out, gates) |" in md
    fmt = f"{report['judge']['uplift']['value']:.3f}"
    assert f"**judge uplift: {fmt}" in md and f"proxy uplift: {report['proxy']['uplift']['value']:.3f}" in md
    assert "raw Bradley–Terry" in md and "never gates" in md
    unjudged = markdown_report(judged["alone"])
    assert judged["alone"]["judge"]["measured"] is False
    assert "judge uplift: not measured" in unjudged and "judge (held-out" not in unjudged
