"""The comparison record schema: one annotator's judgement of one pair of responses.

A *pair* is identified by the hash of (prompt, sorted responses), so the same two responses shown in either
order are the same pair. Its *canonical orientation* puts the lexicographically smaller response first;
labels are flipped into that orientation before aggregation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

SCHEMA_VERSION = "1"

LABELS = ("a", "b", "tie")
ORIENTATIONS = ("as_queued", "swapped")  # how the annotation app showed a queued pair (the record's orientation)


@dataclass(frozen=True)
class Field:
    name: str
    python_type: type | tuple[type, ...]
    dtype: pl.DataType
    required: bool
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("comparison_id", str, pl.String(), True, "unique per judgement"),
    Field("prompt", str, pl.String(), True, "the conversation so far (may be empty)"),
    Field("response_a", str, pl.String(), True, "response shown first"),
    Field("response_b", str, pl.String(), True, "response shown second; must differ from response_a"),
    Field("label", str, pl.String(), True, "a, b or tie"),
    Field("annotator_id", str, pl.String(), True, "who judged"),
    Field("created_at", str, pl.String(), True, "ISO-8601 UTC; must fall in the file's date partition"),
    Field("batch_id", str, pl.String(), False, "vendor batch"),
    Field("policy_a", str, pl.String(), False, "model that produced response_a"),
    Field("policy_b", str, pl.String(), False, "model that produced response_b"),
    Field("temperature", (int, float), pl.Float64(), False, "sampling temperature of the responses"),
    Field("annotation_ms", int, pl.Int64(), False, "time the annotator spent"),
    Field("confidence", int, pl.Int64(), False, "annotator's confidence, 1..5"),
    # written by the annotation app (rlhf_assets/annotation/); optional for every other source
    Field("orientation", str, pl.String(), False, "as_queued | swapped: how the app showed the queued pair"),
    Field("guidelines_version", str, pl.String(), False, "version of the guidelines the annotator saw"),
    Field("rationale", str, pl.String(), False, "the annotator's short free-text reason"),
    Field("item_kind", str, pl.String(), False, "pair | gold | attention | audit (quality-control items are not "
                                                "training data)"),
    Field("expected_label", str, pl.String(), False, "gold / attention items: the right answer, in the orientation "
                                                     "shown (response_a / response_b of this record)"),
)

FIELD_NAMES = tuple(f.name for f in FIELDS)
REQUIRED_FIELDS = tuple(f.name for f in FIELDS if f.required)

# Columns added by ingest: provenance and what went wrong while reading a row.
PROVENANCE_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "source_line": pl.Int64(),
    "pair_id": pl.String(),
    "ingest_error": pl.String(),
    "raw": pl.String(),
}

RECORD_SCHEMA: dict[str, pl.DataType] = {f.name: f.dtype for f in FIELDS} | PROVENANCE_SCHEMA


def pair_id(prompt: str, response_a: str, response_b: str) -> str:
    """Order-independent id of a pair: sha256 of the prompt and the two responses in sorted order."""
    first, second = sorted((response_a, response_b))
    h = hashlib.sha256()
    for part in (prompt, first, second):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def is_canonical_order(response_a: str, response_b: str) -> bool:
    """True when response_a is shown in the canonical first position (the smaller of the two)."""
    return response_a <= response_b


def empty_records() -> pl.DataFrame:
    return pl.DataFrame(schema=RECORD_SCHEMA)
