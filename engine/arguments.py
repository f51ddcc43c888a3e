"""The checks of integer arguments and token ids that every entry point applies, one way for all of them."""
from __future__ import annotations

import numpy as np

from .errors import ArgumentError, TokenizerError


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int from ``low`` to ``high`` (None: no upper bound), else ArgumentError:
    Python and NumPy integers pass, bools and floats do not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < low or (high is not None and value > high):
        wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ArgumentError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_token(token_id, n_vocab: int) -> int:
    """``token_id`` as an int if it is a token of an ``n_vocab``-token vocabulary: TypeError unless an
    integer (Python or NumPy, not a bool), TokenizerError naming it unless in the vocabulary."""
    if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
        raise TypeError(f"token ids must be integers, got {token_id!r}")
    if not 0 <= token_id < n_vocab:
        raise TokenizerError(f"token id {int(token_id)} is out of range for a vocabulary of {n_vocab} ids")
    return int(token_id)
