"""JSON has no NaN or infinity: the one place that turns non-finite numbers into null."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(x: Any) -> float | None:
    """A finite number as a float; NaN, ±inf, None, a bool or a non-number → None."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (also numpy's) replaced by None, recursively through dicts, lists
    and tuples (tuples become lists); other values are returned as they are."""
    if isinstance(value, float) or type(value).__name__ in ("float32", "float64", "float16"):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
