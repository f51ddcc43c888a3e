"""The check of an integer argument that every entry point applies, one way for all of them."""
from __future__ import annotations

import numpy as np

from .errors import ArgumentError


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int from ``low`` to ``high`` (None: no upper bound), else ArgumentError:
    Python and NumPy integers pass, bools and floats do not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < low or (high is not None and value > high):
        wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ArgumentError(f"{name} must be {wanted}, got {value!r}")
    return int(value)
