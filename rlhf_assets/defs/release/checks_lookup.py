"""Which blocking checks of a release's upstream assets failed on their latest evaluation for that partition."""

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

#: The blocking checks a deployment must see passing (asset, check name).
RELEASE_BLOCKING_CHECKS = (("rm_calibration", "test_accuracy"), ("rm_calibration", "calibrated_ece"),
                           ("rm_calibration", "no_nan_scores"), ("ppo_policy", "kl_within_budget"))


def failed_blocking_checks(instance: dg.DagsterInstance, partition: str) -> list[str]:
    failed = []
    for asset, name in RELEASE_BLOCKING_CHECKS:
        key = dg.AssetCheckKey(dg.AssetKey(asset), name)
        for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=50):
            if record.partition != partition or record.status == AssetCheckExecutionRecordStatus.PLANNED:
                continue
            if record.status == AssetCheckExecutionRecordStatus.FAILED:
                failed.append(f"{asset}:{name}")
            break
    return failed
