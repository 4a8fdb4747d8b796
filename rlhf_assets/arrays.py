"""Array arguments: the one place that turns an argument into a float vector and names it when it is not one."""

from __future__ import annotations

from typing import Any

import numpy as np


def float_vector(x: Any, name: str, what: str = "") -> np.ndarray:
    """``x`` as a one-dimensional float64 array (a scalar becomes a single value). More dimensions raise a
    ``ValueError`` that names the argument, ``what`` its values are (e.g. ``" (one value per logged sample)"``) and
    the shape it had."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional{what}; got shape {arr.shape}")
    return arr
