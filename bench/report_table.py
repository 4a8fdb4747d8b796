"""The benchmarks' printed tables: a header over its rule, and cells that print "-" for a figure not measured."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, spec: str) -> str:
    """``format(value, spec)``, or "-" for None, NaN and infinities (a run that failed or was skipped)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def print_header(header: str) -> None:
    print(header)
    print("-" * len(header))
