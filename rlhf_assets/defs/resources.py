"""Resources: the storage root (the one place that knows where it is) and the release thresholds."""

from __future__ import annotations

import dagster as dg

from rlhf_assets.automation.notifier import Notifier
from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.evaluation.drift import DriftSettings
from rlhf_assets.evaluation.thresholds import ReleaseThresholds
from rlhf_assets.storage import DEFAULT_ROOT, ROOT_ENV, S3_ENDPOINT_ENV, Storage


class StorageResource(dg.ConfigurableResource):
    """Storage root: a local directory (default ./.rlhf) or s3://bucket/prefix."""

    root: str = DEFAULT_ROOT
    s3_endpoint_url: str | None = None

    def storage(self) -> Storage:
        options = {"endpoint_url": self.s3_endpoint_url} if self.s3_endpoint_url and "://" in self.root else None
        return Storage(self.root, options)


def storage_resource_from_env() -> StorageResource:
    return StorageResource(
        root=dg.EnvVar(ROOT_ENV).get_value(DEFAULT_ROOT) or DEFAULT_ROOT,
        s3_endpoint_url=dg.EnvVar(S3_ENDPOINT_ENV).get_value(None),
    )


class _ThresholdsResource(dg.ConfigurableResource):
    def thresholds(self) -> ReleaseThresholds:
        return settings_from(self, ReleaseThresholds)


ReleaseThresholdsResource = config_class(
    "ReleaseThresholdsResource", ReleaseThresholds, base=_ThresholdsResource,
    doc="The release-quality thresholds (rlhf_assets/evaluation/thresholds.py), shared by the blocking checks and "
        "the deployment gates: configure them here once.")


class _AutomationResource(dg.ConfigurableResource):
    def settings(self) -> AutomationSettings:
        return settings_from(self, AutomationSettings)

    def drift_settings(self) -> DriftSettings:
        return settings_from(self, DriftSettings)


AutomationResource = config_class(
    "AutomationResource", AutomationSettings, DriftSettings, base=_AutomationResource,
    doc="What the sensors watch for and how they act (rlhf_assets/automation/settings.py) and how drift is measured "
        "(rlhf_assets/evaluation/drift.py DriftSettings): configure it once.")


class NotifierResource(dg.ConfigurableResource):
    """Where alerts go: the sensor's log always; a webhook (JSON POST) when ``webhook_url`` is set."""

    webhook_url: str | None = None

    def notifier(self, log=None) -> Notifier:
        return Notifier(self.webhook_url, log=log.warning if log is not None else None)


AUTOMATION_CONFIG_ENV = "RLHF_AUTOMATION_CONFIG"
RELEASE_THRESHOLDS_ENV = "RLHF_RELEASE_THRESHOLDS"


def automation_resource_from_env() -> AutomationResource:
    """The automation resource, from the JSON/YAML file ``$RLHF_AUTOMATION_CONFIG`` names when set (any fields of
    AutomationSettings and DriftSettings): sensors take no run config, so this is where a deployment sets them."""
    import os

    path = os.environ.get(AUTOMATION_CONFIG_ENV)
    if not path:
        return AutomationResource()
    return AutomationResource(**_read_settings_file(path, "automation", AutomationSettings, DriftSettings))


def release_thresholds_from_env() -> ReleaseThresholdsResource:
    """The release thresholds, from the JSON/YAML file ``$RLHF_RELEASE_THRESHOLDS`` names when set (any fields of
    ReleaseThresholds). A run launched by a sensor (a retrain) takes no run config: without this file its gates
    would always use the defaults, whatever a person set in the Launchpad for their own runs."""
    import os

    path = os.environ.get(RELEASE_THRESHOLDS_ENV)
    if not path:
        return ReleaseThresholdsResource()
    return ReleaseThresholdsResource(**_read_settings_file(path, "release threshold", ReleaseThresholds))


def _read_settings_file(path: str, what: str, *classes) -> dict:
    import dataclasses
    import json
    from pathlib import Path

    text = Path(path).read_text()
    data = (__import__("yaml").safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)) or {}
    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in classes}
    known = set().union(*names.values())
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {what} setting(s) {', '.join(unknown)}")
    for cls in classes:  # validates: a bad value names its field
        cls(**{k: v for k, v in data.items() if k in names[cls]})
    return data
