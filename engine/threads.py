"""Thread counts: the bound llama.cpp puts on them, and the check every entry point applies."""
from __future__ import annotations

from .arguments import check_int

MAX_THREADS = 512
"""llama.cpp's GGML_MAX_N_THREADS. No CPU comes near it, and past it OpenMP fails the process
itself (libgomp aborts near 50,000 threads and asks for 481 GB at 2**31 - 1), so it is refused."""


def check_threads(n_threads) -> int | None:
    """``n_threads`` as an int from 1 to ``MAX_THREADS``, or None (the backend's default); ArgumentError otherwise."""
    return None if n_threads is None else check_int(n_threads, "n_threads", 1, MAX_THREADS)
