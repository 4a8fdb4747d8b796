"""The bias-corrected ECE interval: it must not fail honest models at the test-split sizes releases have, and must
still fail clearly miscalibrated ones (the plain percentile interval fails the honest ones)."""

import numpy as np

from rlhf_assets.evaluation.evidence import bias_corrected_ci, bootstrap_ci, outcome
from rlhf_assets.reward.metrics import expected_calibration_error


def _ece(p, y):
    return expected_calibration_error(p, y, 15)


def _sample(seed, n=289, shift=0.0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.25, 0.85, n)
    return p, (rng.random(n) < np.clip(p - shift, 0, 1)).astype(float)  # shift > 0: overconfident by `shift`


def test_bias_corrected_ece_fails_no_honest_model_and_most_miscalibrated_ones():
    seeds = range(16)
    honest = [bias_corrected_ci(_ece, _sample(s), n_boot=200, seed=s, floor=0.0) for s in seeds]
    assert sum(outcome(lo, hi, 0.05, "<=") == "fail" for _, lo, hi in honest) == 0
    assert np.mean([est for est, _, _ in honest]) < 0.05 < np.mean([_ece(*_sample(s)) for s in seeds])
    # the percentile interval of the plug-in ECE "fails" most perfectly calibrated samples of this size
    plain = [bootstrap_ci(_ece, _sample(s), n_boot=200, seed=s) for s in seeds]
    assert sum(outcome(lo, hi, 0.05, "<=") == "fail" for lo, hi in plain) >= len(seeds) // 2
    bad = [bias_corrected_ci(_ece, _sample(s, shift=0.15), n_boot=200, seed=s, floor=0.0) for s in seeds]
    assert sum(outcome(lo, hi, 0.05, "<=") == "fail" for _, lo, hi in bad) >= 0.75 * len(seeds)


def test_bias_corrected_ci_is_seeded_floored_and_refuses_tiny_samples():
    p, y = _sample(1, n=50)
    a = bias_corrected_ci(_ece, [p, y], n_boot=100, seed=3, floor=0.0)
    assert a == bias_corrected_ci(_ece, [p, y], n_boot=100, seed=3, floor=0.0)
    assert min(a) >= 0.0 and a[1] <= a[0] <= a[2]
    assert all(np.isnan(x) for x in bias_corrected_ci(_ece, [p[:1], y[:1]]))
