"""Calibration of reward-model margins: Platt / isotonic, CV selection, intervals, human correlation, slices, plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from rlhf_assets.reward.calibration import (
    CalibrationReport,
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    cross_validated_log_loss,
    fit_and_select,
    select_method,
)
from rlhf_assets.reward.calibration_diagnostics import (
    agreement_level,
    human_correlation,
    length_bucket,
    metric_intervals,
    reliability_diagram_png,
    slice_accuracy,
)
from rlhf_assets.reward.metrics import accuracy, expected_calibration_error, log_loss, margin_probability, oriented


def _bernoulli(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    return (rng.random(p.size) < p).astype(float)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from σ(m) but scored with margin 4·m: right ranking, far too confident."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0.0, 1.5, n)
    return 4.0 * m, _bernoulli(rng, expit(m))


# ----------------------------------------------------------------------------------------------- ECE by hand


def test_ece_hand_computed():
    y80 = np.array([1.0] * 8 + [0.0] * 2)
    assert expected_calibration_error(np.full(10, 0.8), y80) == pytest.approx(0.0, abs=1e-12)
    y50 = np.array([1.0, 0.0] * 5)
    assert expected_calibration_error(np.full(10, 0.9), y50) == pytest.approx(0.4)
    # two bins: half at 0.1 with 0% positives (gap .1), half at 0.7 with 100% positives (gap .3) → (.1 + .3) / 2
    p = np.array([0.1] * 4 + [0.7] * 4)
    y = np.array([0.0] * 4 + [1.0] * 4)
    assert expected_calibration_error(p, y) == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------------- Platt


def test_platt_recovers_slope_and_intercept():
    rng = np.random.default_rng(0)
    m = rng.normal(0.0, 1.5, 20_000)
    y = _bernoulli(rng, expit(2.0 * m - 0.5))
    cal = PlattCalibrator().fit(m, y)
    assert cal.slope_ == pytest.approx(2.0, abs=0.15)
    assert cal.intercept_ == pytest.approx(-0.5, abs=0.15)
    np.testing.assert_allclose(cal.predict(m), expit(cal.slope_ * m + cal.intercept_))


def test_platt_sample_weights_match_repetition_and_soft_labels_work():
    rng = np.random.default_rng(1)
    m = rng.normal(size=400)
    y = _bernoulli(rng, expit(1.5 * m + 0.3))
    w = rng.integers(1, 4, size=m.size)
    weighted = PlattCalibrator().fit(m, y, sample_weight=w)
    repeated = PlattCalibrator().fit(np.repeat(m, w), np.repeat(y, w))
    assert weighted.slope_ == pytest.approx(repeated.slope_, rel=1e-5)
    assert weighted.intercept_ == pytest.approx(repeated.intercept_, rel=1e-5, abs=1e-7)
    soft = PlattCalibrator().fit(m, expit(0.7 * m - 0.2))  # soft targets exactly on a logistic curve
    assert soft.slope_ == pytest.approx(0.7, abs=1e-4)
    assert soft.intercept_ == pytest.approx(-0.2, abs=1e-4)


def test_platt_json_round_trip():
    rng = np.random.default_rng(2)
    m = rng.normal(size=300)
    cal = PlattCalibrator().fit(m, _bernoulli(rng, expit(m)))
    restored = calibrator_from_dict(json.loads(json.dumps(cal.to_dict(), allow_nan=False)))
    assert isinstance(restored, PlattCalibrator)
    grid = np.linspace(-10, 10, 101)
    np.testing.assert_array_equal(restored.predict(grid), cal.predict(grid))


def test_platt_separable_split_stays_finite():
    m = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
    cal = PlattCalibrator().fit(m, (m > 0).astype(float))
    assert np.isfinite(cal.slope_) and cal.slope_ > 0
    json.dumps(cal.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------------------- isotonic


def test_isotonic_json_round_trip_predicts_like_sklearn():
    rng = np.random.default_rng(3)
    m = np.round(rng.normal(0.0, 2.0, 2_000), 1)  # rounded: repeated x values, as real scores have
    y = _bernoulli(rng, expit(m))
    w = rng.uniform(0.5, 2.0, m.size)
    reference = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(m, y, w)
    cal = IsotonicCalibrator().fit(m, y, sample_weight=w)
    payload = json.dumps(cal.to_dict(), allow_nan=False)
    assert "pickle" not in payload
    restored = calibrator_from_dict(json.loads(payload))
    assert isinstance(restored, IsotonicCalibrator)
    np.testing.assert_array_equal(restored.x_thresholds_, reference.X_thresholds_)
    np.testing.assert_array_equal(restored.y_thresholds_, reference.y_thresholds_)
    grid = np.concatenate([np.linspace(-20, 20, 4001), rng.normal(0, 3, 1000), reference.X_thresholds_,
                           [m.min() - 1e-9, m.max() + 1e-9, -1e300, 1e300]])
    np.testing.assert_allclose(restored.predict(grid), reference.predict(grid), rtol=0, atol=1e-12)
    # sklearn refuses ±inf; np.interp clips them to the end values
    assert restored.predict([-np.inf, np.inf]).tolist() == [reference.y_thresholds_[0], reference.y_thresholds_[-1]]
    np.testing.assert_array_equal(restored.predict(reference.X_thresholds_), reference.y_thresholds_)
    assert np.all(np.diff(restored.predict(np.sort(grid))) >= 0)


def test_from_dict_rejects_bad_payloads():
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        calibrator_from_dict({"method": "beta"})
    with pytest.raises(ValueError, match="lacks 'slope'"):
        calibrator_from_dict({"method": "platt", "intercept": 0.0})
    with pytest.raises(ValueError, match="strictly"):
        calibrator_from_dict({"method": "isotonic", "x_thresholds": [1.0, 0.0], "y_thresholds": [0.2, 0.4]})
    with pytest.raises(ValueError, match="expected a 'isotonic'"):
        IsotonicCalibrator.from_dict({"method": "platt", "slope": 1.0, "intercept": 0.0})


# -------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [PlattCalibrator, IsotonicCalibrator])
def test_clear_errors(cls):
    with pytest.raises(ValueError, match="margin is empty"):
        cls().fit([], [])
    with pytest.raises(ValueError, match="1 NaN value"):
        cls().fit([0.1, np.nan, 0.3], [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="both outcomes"):
        cls().fit([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="differ in length"):
        cls().fit([0.1, 0.2, 0.3], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        cls().fit([0.1, 0.2], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        cls().fit([0.1, 0.2], [1.0, 0.0], sample_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="not fitted"):
        cls().predict([0.0])
    fitted = cls().fit([-1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict([0.0, np.nan])
    assert fitted.predict([]).shape == (0,)


# ------------------------------------------------------------------------------------------ fit and select


def test_calibration_fixes_overconfident_scores():
    val_m, val_y = _overconfident(4_000, seed=10)
    test_m, test_y = _overconfident(4_000, seed=11)
    report = fit_and_select(val_m, val_y, test_m, test_y)
    assert isinstance(report, CalibrationReport)
    assert report.ece_before > 0.1
    assert report.ece_after < 0.05
    assert report.after["log_loss"] < report.before["log_loss"]
    assert report.after["brier"] < report.before["brier"]
    assert report.before["ece"] == pytest.approx(expected_calibration_error(margin_probability(test_m), test_y))
    assert report.after["ece"] == pytest.approx(expected_calibration_error(report.predict(test_m), test_y))
    assert report.n_val == report.n_test == 4_000 and report.n_bins == 15 and report.n_folds == 5
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d["cv_log_loss"]) == {"platt", "isotonic"} and d["method"] == report.method
    assert set(d["before"]) == {"n", "accuracy", "auc", "ece", "log_loss", "brier"}
    restored = calibrator_from_dict(d["calibrator"])
    np.testing.assert_allclose(restored.predict(test_m), report.predict(test_m))


def test_works_on_oriented_chosen_minus_rejected_margins():
    rng = np.random.default_rng(12)
    margin = rng.normal(1.0, 2.0, 3_000)  # chosen − rejected: mostly positive
    p, y = oriented(margin, seed=0)
    flipped = np.where(y == 1.0, margin, -margin)  # the oriented margin behind oriented()'s p
    np.testing.assert_allclose(margin_probability(flipped), p)
    report = fit_and_select(flipped[:1500], y[:1500], flipped[1500:], y[1500:])
    assert 0.0 < report.after["auc"] <= 1.0 and np.isfinite(report.after["log_loss"])


def _step_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """P(y=1) is a step in the margin — isotonic can fit it, a logistic curve cannot."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-3, 3, n)
    return m, _bernoulli(rng, np.where(m > 0, 0.9, 0.1))


def test_cross_validation_with_one_pair_per_fold_is_leave_one_out():
    """K = n: each pair is scored by calibrators fitted on all the others — checkable without the fold logic."""
    m, y = _overconfident(24, seed=24)
    cv = cross_validated_log_loss(m, y, n_folds=m.size, seed=3)
    for name, cls in (("platt", PlattCalibrator), ("isotonic", IsotonicCalibrator)):
        held_out = [log_loss(cls().fit(np.delete(m, i), np.delete(y, i)).predict(m[i:i + 1]), y[i:i + 1])
                    for i in range(m.size)]
        assert cv[name] == pytest.approx(np.mean(held_out))


def test_cross_validation_skips_a_fold_left_with_one_outcome():
    """A single pair of one outcome (tiny validation splits have them): the fold holding it out cannot be fitted
    and is skipped for both candidates; the other folds are scored as usual (K = n, so checkable by hand)."""
    m = np.linspace(-2.0, 2.0, 12)
    y = np.ones(12)
    y[3] = 0.0  # exactly one y = 0
    cv = cross_validated_log_loss(m, y, n_folds=m.size, seed=0)
    for name, cls in (("platt", PlattCalibrator), ("isotonic", IsotonicCalibrator)):
        held_out = [log_loss(cls().fit(np.delete(m, i), np.delete(y, i)).predict(m[i:i + 1]), y[i:i + 1])
                    for i in range(m.size) if i != 3]
        assert cv[name] == pytest.approx(np.mean(held_out))
    assert np.isfinite(cross_validated_log_loss(m, y, n_folds=5)["platt"])


def test_cross_validation_is_seeded_and_validates():
    m, y = _overconfident(200, seed=25)
    assert cross_validated_log_loss(m, y, seed=1) == cross_validated_log_loss(m, y, seed=1)
    assert cross_validated_log_loss(m, y, seed=1) != cross_validated_log_loss(m, y, seed=2)
    assert cross_validated_log_loss(m, y, n_folds=5) != cross_validated_log_loss(m, y, n_folds=10)
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        cross_validated_log_loss(m, y, n_folds=1)
    with pytest.raises(ValueError, match="at least 5 pairs"):
        cross_validated_log_loss([-1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 0.0, 1.0])
    # too small for any fold to keep both outcomes in its training part: nothing scored, Platt by default
    assert all(np.isnan(v) for v in cross_validated_log_loss([0.0, 1.0], [0.0, 1.0], n_folds=2).values())
    assert select_method([0.0, 1.0], [0.0, 1.0], n_folds=2)[0] == "platt"


def test_selection_by_cross_validation_on_the_validation_split():
    # isotonic should win: plenty of data, a step-shaped truth
    iso = fit_and_select(*_step_data(4_000, seed=20), *_step_data(4_000, seed=21))
    # platt should win: a tiny validation split makes isotonic overconfident (0/1 steps) on held-out folds
    val_m2, val_y2 = _overconfident(30, seed=22)
    platt = fit_and_select(val_m2, val_y2, *_overconfident(2_000, seed=23))
    for report, val in ((iso, _step_data(4_000, seed=20)), (platt, (val_m2, val_y2))):
        assert report.cv_log_loss == cross_validated_log_loss(*val, n_folds=5, seed=0)
        assert report.method == min(report.cv_log_loss, key=report.cv_log_loss.get)
        refit = {"platt": PlattCalibrator, "isotonic": IsotonicCalibrator}[report.method]().fit(*val)
        grid = np.linspace(-8, 8, 101)
        np.testing.assert_allclose(report.predict(grid), refit.predict(grid))  # fitted on the whole split
    assert iso.method == "isotonic"
    assert platt.method == "platt"


def test_choice_never_looks_at_the_test_split():
    """The same validation split with two test splits that favour opposite methods: the choice and the calibrator
    stay the same (choosing by test log-loss, as before, would flip), only the test-split measurements move."""
    val_m, val_y = _step_data(1_000, seed=26)
    test_m, test_y = _step_data(2_000, seed=27)
    flipped = 1.0 - test_y  # a reward model the test humans disagree with
    fitted = {"platt": PlattCalibrator().fit(val_m, val_y), "isotonic": IsotonicCalibrator().fit(val_m, val_y)}

    def best_on_test(labels):
        losses = {name: log_loss(cal.predict(test_m), labels) for name, cal in fitted.items()}
        return min(losses, key=losses.get)

    assert best_on_test(test_y) != best_on_test(flipped)  # the test split would decide differently
    a = fit_and_select(val_m, val_y, test_m, test_y)
    b = fit_and_select(val_m, val_y, test_m, flipped)
    assert a.method == b.method
    assert a.calibrator.to_dict() == b.calibrator.to_dict()
    assert a.cv_log_loss == b.cv_log_loss
    assert a.method == "isotonic" and a.after["accuracy"] == pytest.approx(1.0 - b.after["accuracy"])


def test_ties_go_to_platt(monkeypatch):
    import rlhf_assets.reward.calibration as calibration

    monkeypatch.setattr(calibration, "cross_validated_log_loss", lambda *a, **k: {"platt": 0.5, "isotonic": 0.5})
    assert select_method([0.0, 1.0], [0.0, 1.0]) == ("platt", {"platt": 0.5, "isotonic": 0.5})
    monkeypatch.setattr(calibration, "cross_validated_log_loss", lambda *a, **k: {"platt": 0.5, "isotonic": 0.4})
    assert select_method([0.0, 1.0], [0.0, 1.0])[0] == "isotonic"


# ------------------------------------------------------------------------------------------------ intervals


def test_metric_intervals_are_seeded_and_contain_the_estimate():
    m, y = _overconfident(400, seed=28)
    p = margin_probability(m)
    a = metric_intervals(p, y, n_boot=300, seed=4, confidence=0.95)
    assert a == metric_intervals(p, y, n_boot=300, seed=4, confidence=0.95)
    assert a != metric_intervals(p, y, n_boot=300, seed=5, confidence=0.95)
    assert a["accuracy"] == accuracy(p, y) and a["ece"] == pytest.approx(expected_calibration_error(p, y))
    assert a["ece_debiased"] < a["ece"]  # the correction removes noise's upward bias
    for key, point in (("accuracy", "accuracy"), ("ece", "ece_debiased")):
        low, high = a[f"{key}_ci"]
        assert low < a[point] < high
        wide = metric_intervals(p, y, n_boot=300, seed=4, confidence=0.99)[f"{key}_ci"]
        assert wide[0] <= low and wide[1] >= high
    assert a["ece_ci"][0] > 0.1  # overconfident: ECE is clearly high, the interval says so
    json.dumps(a, allow_nan=False)


def test_metric_intervals_not_measurable():
    assert metric_intervals([0.7], [1.0], n_boot=100, seed=0, confidence=0.95)["accuracy_ci"] == [None, None]
    empty = metric_intervals([], [], n_boot=100, seed=0, confidence=0.95)
    assert empty["accuracy"] is None and empty["ece_ci"] == [None, None]


def test_fit_and_select_validates_inputs():
    with pytest.raises(ValueError, match="val_margin is empty"):
        fit_and_select([], [], [0.0], [1.0])
    with pytest.raises(ValueError, match="test_margin contains 1 NaN"):
        fit_and_select([-1.0, 1.0], [0.0, 1.0], [np.nan, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="both outcomes"):
        fit_and_select([-1.0, 1.0], [1.0, 1.0], [0.0], [1.0])


# ------------------------------------------------------------------------------------------ human agreement


def test_human_correlation_monotone_and_random():
    rng = np.random.default_rng(30)
    p = np.sort(rng.uniform(0.05, 0.95, 200))
    share = p ** 2  # strictly monotone, not linear
    result = human_correlation(p, share, n_boot=500, seed=0)
    assert result["n"] == 200 and result["reason"] is None
    assert result["spearman"] == pytest.approx(1.0)
    assert result["spearman_ci_low"] <= 1.0 + 1e-9 and result["spearman_ci_high"] >= 1.0 - 1e-9
    assert result["spearman_ci_low"] == pytest.approx(1.0)
    assert 0.9 < result["pearson_ci_low"] <= result["pearson"] <= result["pearson_ci_high"] <= 1.0

    noise = human_correlation(rng.uniform(size=300), rng.uniform(size=300), n_boot=500, seed=0)
    for key in ("spearman", "pearson"):
        assert noise[f"{key}_ci_low"] < 0.0 < noise[f"{key}_ci_high"]


def test_human_correlation_is_seeded_and_scipy_consistent():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(31)
    x = rng.uniform(size=80)
    h = np.clip(x + rng.normal(0, 0.2, 80), 0, 1)
    a = human_correlation(x, h, n_boot=300, seed=5)
    b = human_correlation(x, h, n_boot=300, seed=5)
    c = human_correlation(x, h, n_boot=300, seed=6)
    assert a == b and a != c
    assert a["spearman"] == pytest.approx(spearmanr(x, h).statistic)
    assert a["pearson"] == pytest.approx(pearsonr(x, h).statistic)


def test_human_correlation_constant_input_gives_nan_with_reason():
    with np.errstate(all="raise"):
        result = human_correlation(np.full(10, 0.5), np.linspace(0, 1, 10))
    assert np.isnan(result["spearman"]) and np.isnan(result["pearson_ci_low"])
    assert "constant" in result["reason"]
    assert "constant" in human_correlation(np.linspace(0, 1, 10), np.ones(10))["reason"]
    assert "at least 3" in human_correlation([0.1, 0.9], [0.0, 1.0])["reason"]
    with pytest.raises(ValueError, match="differ in length"):
        human_correlation([0.1, 0.2], [0.3])


# ------------------------------------------------------------------------------------------------- slices


def test_agreement_level_and_length_bucket():
    share = np.array([0.0, 1.0, 0.8, 0.2, 4 / 5, 1 / 5, 0.79, 0.5, 0.25])
    assert agreement_level(share).tolist() == ["unanimous", "unanimous", "strong", "strong", "strong", "strong",
                                               "split", "split", "split"]
    assert length_bucket([0, 199, 200, 499, 500, 999, 1000, 5000]).tolist() == [
        "<200", "<200", "200-500", "200-500", "500-1000", "500-1000", ">=1000", ">=1000"]
    assert length_bucket([5, 50], edges=(10,)).tolist() == ["<10", ">=10"]
    with pytest.raises(ValueError, match="strictly increasing"):
        length_bucket([1], edges=(500, 200))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        agreement_level([1.2])


def test_slice_accuracy_counts_sum_to_n():
    rng = np.random.default_rng(40)
    n = 500
    p = rng.uniform(size=n)
    y = _bernoulli(rng, p)
    slices = {"agreement_level": agreement_level(rng.choice([0.0, 0.2, 0.4, 0.6, 1.0], n)),
              "response_length": length_bucket(rng.integers(0, 3000, n))}
    rows = slice_accuracy(p, y, slices)
    for name in slices:
        mine = [r for r in rows if r["slicing"] == name]
        assert sum(r["n"] for r in mine) == n
        assert sum(r["share"] for r in mine) == pytest.approx(1.0)
        for r in mine:
            mask = slices[name] == r["value"]
            assert r["accuracy"] == pytest.approx(np.mean((p[mask] > 0.5) == (y[mask] == 1.0)))
    assert [r["value"] for r in rows if r["slicing"] == "agreement_level"] == ["unanimous", "strong", "split"]
    assert [r["value"] for r in rows if r["slicing"] == "response_length"] == [
        "<200", "200-500", "500-1000", ">=1000"]
    with pytest.raises(ValueError, match="slice 'x' has 2 labels for 500 pairs"):
        slice_accuracy(p, y, {"x": np.array(["a", "b"])})


# ---------------------------------------------------------------------------------------------------- plot


def test_reliability_diagram_is_png():
    test_m, test_y = _overconfident(1_000, seed=50)
    report = fit_and_select(*_overconfident(1_000, seed=51), test_m, test_y)
    png = reliability_diagram_png(margin_probability(test_m), report.predict(test_m), test_y)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 5_000
    with pytest.raises(ValueError, match="differ in length"):
        reliability_diagram_png([0.5], [0.5, 0.6], [1.0])
