"""The memory roofline of decoding: how fast this machine reads, and how many bytes a token reads.

A decoded token multiplies every weight matrix once, so its time is bounded below by the
weights' bytes over the read bandwidth.  ``read_bandwidth`` measures that bandwidth the
plain way (threads summing their share of a buffer far larger than the caches), to be
taken in the same run as the decode it bounds: on a VM it moves with the neighbours.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import numpy as np

PROBE_BYTES = 1 << 29  # 512 MiB: sixteen times the L3 of the machines this runs on


def read_bandwidth(n_threads: int, n_bytes: int = PROBE_BYTES, repeat: int = 3) -> float:
    """GB/s of ``n_threads`` threads each summing its slice of an ``n_bytes`` float64 buffer (best of ``repeat``).

    NumPy's sum is vectorised and releases the GIL, so the threads read side by side.
    """
    buffer = np.ones(n_bytes // 8)  # written once: every page is resident before the clock starts
    parts = np.array_split(buffer, n_threads)
    best = float("inf")
    with ThreadPoolExecutor(n_threads) as pool:
        for _ in range(repeat):
            t0 = time.perf_counter()
            list(pool.map(np.add.reduce, parts))
            best = min(best, time.perf_counter() - t0)
    return buffer.nbytes / best / 1e9


def bytes_per_token(path: Path) -> int:
    """The weight bytes one decoded token reads: every tensor but the embedding table, of which
    it reads one row (unless no output matrix is stored: then the table is the output matrix)."""
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())
