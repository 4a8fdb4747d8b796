"""Typed references that travel along the asset graph: what an asset made, for the assets downstream of it.

A model asset returns a :class:`ModelRef` (a :class:`PolicyRef` for PPO, with its KL evidence); rm_calibration a
:class:`CalibrationRef`; ope_report an :class:`OPERef`; deployment_decision a :class:`DecisionRef`;
production_release a :class:`ReleaseActionRef`; preference_dataset a :class:`DatasetTable` (the table with the
dataset id it is pinned as). Downstream assets take these as inputs, so nobody re-reads a pointer file to learn what
a parent already knew. References are small and JSON-serialisable: the IO manager stores them as
``<partition>.json`` with their type name (``reference_type``) and gives the same class back. No Dagster here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from rlhf_assets.jsonsafe import json_safe
from rlhf_assets.storage import Storage

TYPE_KEY = "reference_type"


class Reference:
    """Base of every reference: JSON with its type name, and back (:func:`reference_from_json`)."""

    def to_json(self) -> dict[str, Any]:
        return {TYPE_KEY: type(self).__name__, **json_safe(dataclasses.asdict(self))}


@dataclass(frozen=True)
class ModelRef(Reference):
    """A stored model artifact: its content id and uri, its role (``kind``: reward_model, judge_reward_model,
    sft_policy, ppo_policy), the dataset it was trained on, its parent artifacts and its headline metrics."""

    artifact_id: str
    kind: str
    dataset_id: str
    uri: str | None = None
    parents: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.artifact_id, str) or not self.artifact_id:
            raise ValueError(f"{type(self).__name__}: artifact_id must be a non-empty string")
        object.__setattr__(self, "parents", tuple(self.parents))


@dataclass(frozen=True)
class PolicyRef(ModelRef):
    """A PPO policy: the checkpoint it kept and the KL evidence the release gate reads. ``measured_kl`` is the
    kl_within_budget check's independent measurement ({value, ci_low, ci_high, limit, outcome, ...}); the
    trainer's own ``selected_kl`` is reported beside it, never gated on."""

    sft_artifact_id: str | None = None
    reward_model_artifact_id: str | None = None
    selected_step: int | None = None
    selected_kl: float | None = None
    kl_budget: float | None = None
    measured_kl: dict[str, Any] | None = None
    stop_reason: str | None = None


@dataclass(frozen=True)
class CalibrationRef(Reference):
    """rm_calibration's result: the reward model it calibrates, the stored calibration artifact (None when nothing
    could be calibrated, e.g. on non-finite scores), the calibrator, the test-split report and the human–RM
    correlation the gates read."""

    reward_model_id: str
    dataset_id: str
    calibration_artifact_id: str | None
    calibrator: dict[str, Any] | None
    report: dict[str, Any]
    human_correlation: dict[str, Any] | None = None
    slices: list[Any] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReferenceRef(Reference):
    """drift_reference's result: what the release's reward model, served as the service serves it, says about the
    release's held-out pairs, and the drift thresholds calibrated on it (stored under monitoring/drift/reference/)."""

    artifact_id: str
    release: str
    items: int
    pairs: int
    calibrated: bool
    window: int | None = None
    thresholds: dict[str, float | None] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True)
class OPERef(Reference):
    """ope_report's result: the report (proxy and judge sides, ESS, k̂, reliability; evaluation/release_ope.py) and
    the logged samples it was computed on, stored beside it (``log_uri``, content hash ``log_sha256``)."""

    report: dict[str, Any]
    log_uri: str
    log_sha256: str


@dataclass(frozen=True)
class AdversarialRef(Reference):
    """adversarial_eval's result: the report (reward-model and policy probes, worst examples;
    evaluation/adversarial.py) and the checks computed from it ({check, value, threshold, passed, description})."""

    report: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DecisionRef(Reference):
    """deployment_decision's verdict for a release and the artifacts it decides about (the same record is kept in
    the registry, ``registry/decisions/<release>.json``, which promotion and rollback read)."""

    release: str
    verdict: str
    artifacts: dict[str, str]
    canary_share: float | None = None
    reasons: list[str] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    def as_decision(self) -> dict[str, Any]:
        """What moving the registry's aliases reads (registry/deployment.py's ``apply_decision``)."""
        return {"release": self.release, "verdict": self.verdict, "artifacts": dict(self.artifacts),
                "canary_share": self.canary_share, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class ReleaseActionRef(Reference):
    """What production_release did to the registry's aliases for a release."""

    release: str
    verdict: str
    mode: str
    action: str
    reason: str
    aliases: dict[str, str | None]
    artifacts: dict[str, str]
    history_seq: int | None = None


@dataclass(frozen=True)
class DatasetTable:
    """A release's preference dataset: the table and the content id it is pinned as (the snapshot's id)."""

    dataset_id: str
    table: pl.DataFrame


REFERENCE_TYPES: dict[str, type] = {cls.__name__: cls for cls in (ModelRef, PolicyRef, CalibrationRef, OPERef,
                                                                   DecisionRef, ReleaseActionRef, DriftReferenceRef,
                                                                   AdversarialRef)}


def is_reference(obj: Any) -> bool:
    return type(obj) in REFERENCE_TYPES.values()


def reference_from_json(doc: dict[str, Any]) -> Reference:
    """The reference a :meth:`to_json` document describes; unknown types and fields are errors, not guesses."""
    name = doc.get(TYPE_KEY) if isinstance(doc, dict) else None
    cls = REFERENCE_TYPES.get(name)
    if cls is None:
        raise ValueError(f"not a stored reference (reference_type {name!r}; known: {', '.join(REFERENCE_TYPES)})")
    fields = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in doc.items() if k != TYPE_KEY}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {', '.join(unknown)}")
    return cls(**data)


def read_reference(storage: Storage, asset: str, partition: str | None) -> Reference:
    """The reference an asset stored for a partition (what its downstream assets receive)."""
    return reference_from_json(storage.read_json(storage.reference_path(asset, partition)))


def write_reference(storage: Storage, asset: str, partition: str | None, ref: Reference) -> str:
    """Store a reference as the asset's output for a partition (the IO manager does this; tests and tools that
    stand in for an upstream asset use it too); returns the content sha256."""
    return storage.write_json(storage.reference_path(asset, partition), ref.to_json())
