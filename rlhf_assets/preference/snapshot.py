"""The preference dataset of a release: a pinned snapshot of every aggregated day up to the release's cutoff.

The snapshot's manifest lists each upstream partition with the content hash it had when it was read; the hash
of that manifest (with the snapshot settings) is the dataset id. The table is stored once, content-addressed
(``<root>/datasets/sha256/<id>.parquet``), and the release points at it (``registry/releases/<key>.dataset.json``),
so rematerializing an old release reads its own snapshot, never "the newest data".

Splits are by a hash of the prompt: no prompt appears in two splits. Besides train/validation/test there is a
``judge`` split: the pairs of an independent judge reward model, which scores the release's policy without PPO ever
having optimised it (Gao et al.'s gold/proxy set-up), so the uplift that gates a release is not the proxy's own.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal, Protocol

import polars as pl
from pydantic import Field

from rlhf_assets.code_version import code_version
from rlhf_assets.config_schema import settings
from rlhf_assets.preference.schema import SCHEMA_VERSION
from rlhf_assets.storage import Storage, sha256_bytes

UPSTREAM_ASSET = "aggregated_labels"


class SnapshotError(RuntimeError):
    """The snapshot cannot be built or read as pinned; the message says which partition and why."""


#: Split names in prompt-bucket order: [0, train) train, then validation, then judge; the rest is test.
SPLITS = ("train", "validation", "judge", "test")


@settings
class SnapshotSettings:
    """How a release's preference dataset is cut from the aggregated days. Split fractions (of prompts, by hash)
    default to train 0.6 / validation 0.1 / judge 0.2 / test 0.1: the judge gets a third of the reward model's
    training budget — enough pairs to rank responses on its own — while the validation and test splits keep their
    former 0.1 each (early stopping, calibration and OPE prompts are unchanged in size). ``judge_fraction=0`` gives
    the former train/validation/test split exactly."""

    tie_policy: Literal["drop", "half"] = "drop"
    """Tied pairs: drop them, or keep them with target 0.5."""
    train_fraction: float = 0.6
    """Share of prompts (by hash) in the train split."""
    validation_fraction: float = 0.1
    """Share of prompts in the validation split (early stopping, calibration)."""
    judge_fraction: float = 0.2
    """Share of prompts held out for the independent judge reward model (judge_reward_model); the rest after train,
    validation and judge is the test split."""
    min_confidence: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Drop pairs whose aggregated label's posterior confidence is below this."""

    def __post_init__(self):
        if not (0 < self.train_fraction < 1 and 0 <= self.validation_fraction < 1 and 0 <= self.judge_fraction < 1
                and self.train_fraction + self.validation_fraction + self.judge_fraction <= 1 + 1e-12):
            raise ValueError("need 0 < train_fraction < 1, 0 <= validation_fraction, 0 <= judge_fraction and "
                             "their sum <= 1 (the rest is the test split)")


@dataclass
class DatasetSnapshot:
    dataset_id: str
    table: pl.DataFrame
    manifest: dict[str, Any]
    reused: bool = False  # True when the release's pinned snapshot was read back


def prompt_bucket(prompt: pl.Expr) -> pl.Expr:
    """A uniform number in [0, 1) from the prompt's text: the split key (stable across runs and machines)."""
    return prompt.map_elements(lambda p: int(hashlib.sha256(p.encode()).hexdigest()[:12], 16) / 16**12,
                               return_dtype=pl.Float64)


def split_of(bucket: pl.Expr, settings: SnapshotSettings) -> pl.Expr:
    """The split of a prompt bucket: consecutive intervals of [0, 1) in :data:`SPLITS` order."""
    edge = settings.train_fraction
    expr = pl.when(bucket < edge).then(pl.lit("train"))
    for name, fraction in (("validation", settings.validation_fraction), ("judge", settings.judge_fraction)):
        edge += fraction
        expr = expr.when(bucket < edge).then(pl.lit(name))
    return expr.otherwise(pl.lit("test"))


class UpstreamDay(Protocol):
    """One stored ``aggregated_labels`` day as the asset's input hands it over (the IO manager's StoredPartition):
    its manifest ({partition, sha256, rows, ...}) and its bytes, read only when asked."""

    @property
    def manifest(self) -> dict[str, Any] | None: ...

    def read_bytes(self) -> bytes: ...


def days_on_or_before(upstream: Mapping[str, UpstreamDay], cutoff: str) -> list[str]:
    """The stored days a snapshot with this cutoff reads, in date order (never a day after the cutoff)."""
    return sorted(day for day in upstream if day <= cutoff)


def build_snapshot(upstream: Mapping[str, UpstreamDay], cutoff: str,
                   settings: SnapshotSettings | None = None) -> DatasetSnapshot:
    """Read every stored day on or before ``cutoff`` (each checked against its manifest's sha256) and pin them."""
    settings = settings or SnapshotSettings()
    days = days_on_or_before(upstream, cutoff)
    if not days:
        raise SnapshotError(f"no {UPSTREAM_ASSET} partitions on or before {cutoff}: materialize the data pillar first")
    frames, pinned = [], []
    for day in days:
        m = upstream[day].manifest
        if not m or m.get("partition") != day:
            raise SnapshotError(f"{UPSTREAM_ASSET}/{day}: no table manifest for this partition")
        data = upstream[day].read_bytes()
        if sha256_bytes(data) != m["sha256"]:
            raise SnapshotError(f"{UPSTREAM_ASSET}/{day}: content does not match its manifest")
        frames.append(pl.read_parquet(io.BytesIO(data)).with_columns(pl.lit(day).alias("day")))
        pinned.append({"partition": day, "sha256": m["sha256"], "rows": m["rows"]})
    labels = pl.concat(frames, how="diagonal_relaxed")
    rows_in = labels.height
    # A pair judged again on a later day: the latest aggregate wins.
    labels = labels.sort("day").unique("pair_id", keep="last").sort("pair_id")
    table, dropped = _to_training_rows(labels, settings)
    identity = {"upstream": pinned, "settings": asdict(settings), "schema_version": SCHEMA_VERSION}
    dataset_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    counts = table.group_by("split").len().sort("split")
    manifest = identity | {
        "dataset_id": dataset_id,
        "cutoff": cutoff,
        "code_version": code_version(),
        "rows_in": rows_in,
        "rows": table.height,
        "duplicates_replaced": rows_in - labels.height,
        "dropped": dropped,
        "splits": dict(zip(counts["split"], counts["len"])),
    }
    return DatasetSnapshot(dataset_id=dataset_id, table=table, manifest=manifest)


def _to_training_rows(labels: pl.DataFrame, settings: SnapshotSettings) -> tuple[pl.DataFrame, dict[str, int]]:
    is_tie = pl.col("label") == "tie"
    dropped = {"ties": 0, "low_confidence": 0}
    if settings.tie_policy == "drop":
        dropped["ties"] = labels.filter(is_tie).height
        labels = labels.filter(~is_tie)
    confident = pl.col("confidence") >= settings.min_confidence
    dropped["low_confidence"] = labels.filter(~confident).height
    labels = labels.filter(confident)
    a_wins = pl.col("label") != "b"  # ties kept with 'half' go in canonical order with target 0.5
    p_a_over_b = pl.col("p_a") / (pl.col("p_a") + pl.col("p_b"))
    bucket = prompt_bucket(pl.col("prompt"))
    weight = pl.col("mean_annotator_accuracy") if "mean_annotator_accuracy" in labels.columns else pl.lit(1.0)
    table = labels.select(
        "pair_id", "day",
        split_of(bucket, settings).alias("split"),
        "prompt", "response_a", "response_b", "label", "p_a", "p_b", "p_tie", "share_a", "n_votes",
        pl.when(a_wins).then(pl.col("response_a")).otherwise(pl.col("response_b")).alias("chosen"),
        pl.when(a_wins).then(pl.col("response_b")).otherwise(pl.col("response_a")).alias("rejected"),
        pl.when(is_tie).then(0.5).when(a_wins).then(p_a_over_b).otherwise(1.0 - p_a_over_b).alias("target"),
        pl.when(a_wins).then(pl.col("share_a")).otherwise(1.0 - pl.col("share_a")).alias("share_chosen"),
        weight.cast(pl.Float64).fill_null(1.0).alias("weight"),
    )
    return table, dropped


def _pointer(storage: Storage, release: str):
    return storage.path("registry", "releases", f"{release}.dataset.json")


def load_or_build_snapshot(storage: Storage, release: str, cutoff: str, upstream: Mapping[str, UpstreamDay],
                           settings: SnapshotSettings | None = None) -> DatasetSnapshot:
    """The release's pinned snapshot when it has one (``upstream`` is then not read at all: late annotations do not
    change it); otherwise build it from ``upstream``, store it and pin it."""
    pointer = _pointer(storage, release)
    if pointer.exists():
        dataset_id = storage.read_json(pointer)["dataset_id"]
        manifest = storage.read_json(storage.path("datasets", "sha256", f"{dataset_id}.manifest.json"))
        table_path = storage.path("datasets", "sha256", f"{dataset_id}.parquet")
        data = storage.read_bytes(table_path)
        if sha256_bytes(data) != manifest["table_sha256"]:
            raise SnapshotError(f"dataset {dataset_id}: stored table does not match its manifest")
        return DatasetSnapshot(dataset_id, storage.read_parquet(table_path), manifest, reused=True)
    snapshot = build_snapshot(upstream, cutoff, settings)
    table_path = storage.path("datasets", "sha256", f"{snapshot.dataset_id}.parquet")
    snapshot.manifest["table_sha256"] = storage.write_parquet(table_path, snapshot.table)
    storage.write_json(storage.path("datasets", "sha256", f"{snapshot.dataset_id}.manifest.json"), snapshot.manifest)
    storage.write_json(pointer, {"release": release, "dataset_id": snapshot.dataset_id})
    return snapshot


def pairs_jsonl(table: pl.DataFrame, split: str) -> bytes:
    """A split as training pairs: {"prompt", "chosen", "rejected", "target", "weight"} per line."""
    rows = table.filter(pl.col("split") == split).select("prompt", "chosen", "rejected", "target", "weight")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.iter_rows(named=True)).encode()


def sft_jsonl(table: pl.DataFrame, split: str) -> bytes:
    """A split's preferred responses as SFT rows: {"prompt", "response"} per line (ties carry no preference and are
    left out)."""
    rows = table.filter((pl.col("split") == split) & (pl.col("target") != 0.5)).select(
        "prompt", pl.col("chosen").alias("response"))
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.iter_rows(named=True)).encode()


def split_prompts(table: pl.DataFrame, split: str) -> list[str]:
    """A split's distinct prompts, in first-seen order (PPO's rollout and held-out prompts, the KL check's and the
    OPE's test prompts)."""
    return table.filter(pl.col("split") == split).select("prompt").unique(maintain_order=True)["prompt"].to_list()


def prompts_jsonl(table: pl.DataFrame, split: str) -> bytes:
    """:func:`split_prompts` as JSONL: {"prompt"} per line."""
    return "".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in split_prompts(table, split)).encode()
