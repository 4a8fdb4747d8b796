"""Comparison records for tests: one clean record builder shared by the ingest, validation and CLI tests, and the
bad rows (BAD) shared by the validation and data-pillar tests."""

import json

DAY = "2025-06-01"  # inside the default daily partitions (defs/partitions.py)


def rec(i: int, **overrides) -> dict:
    """A clean comparison on DAY; an override of ``...`` drops the field."""
    row = {
        "comparison_id": f"c{i}",
        "prompt": f"prompt {i}",
        "response_a": f"response a {i}",
        "response_b": f"response b {i}",
        "label": ("a", "b", "tie")[i % 3],
        "annotator_id": f"ann{i % 4}",
        "created_at": f"{DAY}T{i % 24:02d}:00:00Z",
        "batch_id": "batch-1",
        "policy_a": "pol-a",
        "policy_b": "pol-b",
        "temperature": 0.7,
        "annotation_ms": 1000 + i,
        "confidence": 1 + i % 5,
    }
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not ...}


def jsonl(*rows: dict | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def line(row: dict) -> bytes:
    """One record as one JSON line (no newline)."""
    return json.dumps(row).encode()


# Bad rows for validate() with max_prompt_chars=200, max_response_chars=100 (the validation and data-pillar tests):
# name -> (line, substrings that must appear among its failed_expectations)
BAD: dict[str, tuple[bytes, list[str]]] = {
    "missing label": (line(rec(100, label=...)), ["to_not_be_null(label)"]),
    "label A": (line(rec(101, label="A")), ["to_be_in_set(label)"]),
    "label maybe": (line(rec(102, label="maybe")), ["to_be_in_set(label)"]),
    "label int": (line(rec(103, label=1)), ["to_be_null(ingest_error)", "to_not_be_null(label)"]),
    "empty annotator_id": (line(rec(104, annotator_id="")), ["to_match_regex(annotator_id)"]),
    "whitespace annotator_id": (line(rec(105, annotator_id=" \t ")), ["to_match_regex(annotator_id)"]),
    "missing annotator_id": (line(rec(106, annotator_id=...)), ["to_not_be_null(annotator_id)"]),
    "identical responses": (
        line(rec(107, response_a="same", response_b="same")),
        ["unique_within_record(response_a,response_b)"],
    ),
    "empty response": (line(rec(108, response_b="")), ["lengths_to_be_between(response_b)"]),
    "response too long": (line(rec(109, response_a="x" * 101)), ["lengths_to_be_between(response_a)"]),
    "prompt too long": (line(rec(110, prompt="p" * 201)), ["lengths_to_be_between(prompt)"]),
    "repeat judgement": (
        line(rec(113, annotator_id="rep", prompt="P", response_a="X", response_b="Y")),
        ["compound_columns_to_be_unique(annotator_id,pair_id)"],
    ),
    "repeat judgement swapped": (
        line(rec(114, annotator_id="rep", prompt="P", response_a="Y", response_b="X", label="b")),
        ["compound_columns_to_be_unique(annotator_id,pair_id)"],
    ),
    "repeat judgement same order": (
        line(rec(131, annotator_id="rep2", prompt="Q", response_a="X", response_b="Y")),
        ["compound_columns_to_be_unique(annotator_id,pair_id)"],
    ),
    "repeat judgement same order again": (
        line(rec(132, annotator_id="rep2", prompt="Q", response_a="X", response_b="Y", label="tie")),
        ["compound_columns_to_be_unique(annotator_id,pair_id)"],
    ),
    "created_at unparseable": (line(rec(115, created_at="yesterday")), ["to_not_be_null(created_at_epoch)"]),
    "created_at next day": (line(rec(116, created_at="2025-06-02T00:00:00Z")), ["to_be_between(created_at_epoch)"]),
    "created_at day before": (
        line(rec(117, created_at="2025-06-01T01:00:00+02:00")),
        ["to_be_between(created_at_epoch)"],
    ),
    "created_at missing": (line(rec(118, created_at=...)), ["to_not_be_null(created_at)"]),
    "confidence 9": (line(rec(119, confidence=9)), ["to_be_between(confidence)"]),
    "confidence 0": (line(rec(120, confidence=0)), ["to_be_between(confidence)"]),
    "negative annotation_ms": (line(rec(121, annotation_ms=-5)), ["to_be_between(annotation_ms)"]),
    "annotation_ms over a day": (line(rec(122, annotation_ms=25 * 3600 * 1000)), ["to_be_between(annotation_ms)"]),
    "temperature out of range": (line(rec(123, temperature=-1.0)), ["to_be_between(temperature)"]),
    "blank comparison_id": (line(rec(124, comparison_id=" ")), ["to_match_regex(comparison_id)"]),
    "annotation_ms as string": (line(rec(125, annotation_ms="900")), ["to_be_null(ingest_error)"]),
    "confidence bool": (line(rec(126, confidence=True)), ["to_be_null(ingest_error)"]),
    "prompt object": (line(rec(127, prompt={"x": 1})), ["to_be_null(ingest_error)", "to_not_be_null(prompt)"]),
    "malformed JSON line": (b'{"comparison_id": "c128", "label": "a"', ["to_be_null(ingest_error)"]),
    "invalid UTF-8 line": (b"\xff\xfe" + line(rec(129)), ["to_be_null(ingest_error)"]),
    "JSON array line": (b'["c130", "a"]', ["to_be_null(ingest_error)", "to_not_be_null(comparison_id)"]),
}
