"""Asset-check names: one constant each, shared by the ``check_specs``, the deployment gate's list and the tests."""

from rlhf_assets.evaluation.adversarial_probes import DEGENERATE_SHARE, LENGTH_DRIFT, STYLE_FLIP_RATE

# data pillar (daily partitions)
ALL_FILES_READABLE = "all_files_readable"      # raw_comparisons, WARN
QUARANTINE_RATE = "quarantine_rate"            # validated_pairs, blocking
ROWS_CONSERVED = "rows_conserved"              # validated_pairs, blocking
AGGREGATION_CONVERGED = "aggregation_converged"  # aggregated_labels, WARN
ANNOTATORS_STABLE = "annotators_stable"        # annotator_reliability, WARN (annotator_disagreement_sensor)

# served traffic (serving_log, daily; evaluated by drift_sensor and human_rm_correlation_sensor)
SCORE_DRIFT = "score_drift"                    # WARN
PROMPT_DRIFT = "prompt_drift"                  # WARN
HUMAN_RM_CORRELATION = "human_rm_correlation"  # WARN

# release partitions
TEST_ACCURACY = "test_accuracy"                # rm_calibration, blocking
CALIBRATED_ECE = "calibrated_ece"              # rm_calibration, blocking
NO_NAN_SCORES = "no_nan_scores"                # rm_calibration, blocking
KL_WITHIN_BUDGET = "kl_within_budget"          # ppo_policy, blocking
RELEASE_APPROVED = "release_approved"          # deployment_decision, WARN: the verdict at a glance; never blocks
# adversarial_eval (ERROR severity; evaluation/adversarial.py): STYLE_FLIP_RATE, LENGTH_DRIFT, DEGENERATE_SHARE
ADVERSARIAL_CHECKS: tuple[tuple[str, str], ...] = tuple(
    ("adversarial_eval", c) for c in (STYLE_FLIP_RATE, LENGTH_DRIFT, DEGENERATE_SHARE))

#: (asset, check) pairs PPO must see passing on its release's partition before it trains.
CALIBRATION_BLOCKING_CHECKS: tuple[tuple[str, str], ...] = (
    ("rm_calibration", TEST_ACCURACY), ("rm_calibration", CALIBRATED_ECE), ("rm_calibration", NO_NAN_SCORES),
)
#: (asset, check) pairs a release's deployment must see passing on that release's partition.
RELEASE_BLOCKING_CHECKS: tuple[tuple[str, str], ...] = (*CALIBRATION_BLOCKING_CHECKS, ("ppo_policy", KL_WITHIN_BUDGET),
                                                       *ADVERSARIAL_CHECKS)
#: (asset, check) pairs that block a day's data from flowing downstream.
DATA_BLOCKING_CHECKS: tuple[tuple[str, str], ...] = (
    ("validated_pairs", QUARANTINE_RATE), ("validated_pairs", ROWS_CONSERVED),
)
