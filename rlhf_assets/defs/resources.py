"""The storage resource: the one place that knows where the storage root is."""

from __future__ import annotations

from dataclasses import fields

import dagster as dg

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


class ReleaseThresholdsResource(dg.ConfigurableResource):
    """The release-quality thresholds (rlhf_assets/evaluation/thresholds.py), shared by the blocking checks and the
    deployment gates: configure them here once. Each field has ReleaseThresholds' default."""

    min_rm_test_accuracy: float = ReleaseThresholds.min_rm_test_accuracy
    max_calibrated_ece: float = ReleaseThresholds.max_calibrated_ece
    min_human_rm_correlation: float = ReleaseThresholds.min_human_rm_correlation
    min_uplift: float = ReleaseThresholds.min_uplift
    max_kl: float | None = ReleaseThresholds.max_kl
    n_bootstrap: int = ReleaseThresholds.n_bootstrap
    confidence: float = ReleaseThresholds.confidence
    seed: int = ReleaseThresholds.seed

    def thresholds(self) -> ReleaseThresholds:
        return ReleaseThresholds(**{f.name: getattr(self, f.name) for f in fields(ReleaseThresholds)})
