"""What every training entry point shares: its rank, and Dagster Pipes on rank 0 only.

Lightning's DDP children and torchrun's workers inherit the environment, so every rank sees
``DAGSTER_PIPES_CONTEXT``; only rank 0 (``RANK`` / ``LOCAL_RANK`` 0 or unset) opens Pipes and reports.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"


def rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf → None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def meta(value: Any) -> Any:
    """A Dagster Pipes metadata value with an explicit type (an already typed ``{"raw_value", "type"}`` passes)."""
    if isinstance(value, dict) and set(value) == {"raw_value", "type"}:
        return value
    if isinstance(value, bool):
        return {"raw_value": value, "type": "bool"}
    if isinstance(value, int):
        return {"raw_value": value, "type": "int"}
    if isinstance(value, float):
        return {"raw_value": value, "type": "float"} if math.isfinite(value) else {"raw_value": None, "type": "null"}
    if value is None:
        return {"raw_value": None, "type": "null"}
    if isinstance(value, (dict, list, tuple)):
        return {"raw_value": clean(value), "type": "json"}
    return {"raw_value": str(value), "type": "text"}


@contextlib.contextmanager
def pipes() -> Iterator[Any | None]:
    """Dagster Pipes context on rank 0 of a Pipes-launched process, else None."""
    if not os.environ.get(PIPES_ENV) or rank() != 0:
        yield None
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield pipes


def png_markdown(png: bytes, title: str) -> str:
    """A PNG as a markdown image with a data URL (how plots travel in materialization metadata)."""
    import base64

    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
