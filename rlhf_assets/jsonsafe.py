"""JSON has no NaN or infinity: the one place that turns non-finite numbers into null."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def finite_or_none(x: Any) -> float | None:
    """A finite number as a float; NaN, ±inf, None, a bool (also numpy's) or a non-number (a string too) → None."""
    if isinstance(x, (bool, np.bool_, str, bytes)) or x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (also numpy's) replaced by None, recursively through dicts, lists
    and tuples (tuples become lists); other values are returned as they are."""
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_plain(value: Any, other: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as plain JSON data, recursively: mapping keys → str, lists, tuples and numpy arrays → lists (a 0-d
    array → its value), numpy bools / integers / floats → Python ones, non-finite floats → None. Strings and None
    stay; any other value stays as it is, or becomes ``other(value)`` when ``other`` is given."""
    if isinstance(value, Mapping):
        return {str(k): json_plain(v, other) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v, other) for v in value]
    if isinstance(value, np.ndarray):
        return json_plain(value.tolist(), other)  # nested lists; a 0-d array its one value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if value is None or isinstance(value, str) or other is None:
        return value
    return other(value)
