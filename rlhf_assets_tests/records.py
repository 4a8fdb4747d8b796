"""Comparison records for tests: one clean record builder shared by the ingest, validation and CLI tests."""

import json

DAY = "2024-05-01"


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
