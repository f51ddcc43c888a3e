"""OpenMP plumbing: whether the build has it, and a tiny kernel that proves a thread count is honoured."""
import numpy as np

from cython.parallel cimport prange, parallel

cdef extern from "omp_compat.h" nogil:
    const int LLAMANP_OPENMP
    int omp_get_max_threads()
    int omp_get_thread_num()


MAX_THREADS = 512
"""The most threads a kernel runs on: llama.cpp's GGML_MAX_N_THREADS, as ``engine.threads.MAX_THREADS``
(the engine refuses more with its own error first); past it libgomp aborts the process."""


def openmp_enabled() -> bool:
    """True when the kernels were compiled with OpenMP."""
    return LLAMANP_OPENMP == 1


def max_threads() -> int:
    """OpenMP's default team size (1 without OpenMP)."""
    return omp_get_max_threads()


def check_threads(n_threads) -> int:
    """A thread count at the Python boundary: an int from 1 to MAX_THREADS (Python or NumPy, not a
    bool), else ValueError; for None OpenMP's default within the same bound."""
    if type(n_threads) is int and 1 <= n_threads <= MAX_THREADS:  # the common case
        return n_threads
    if n_threads is None:
        return min(omp_get_max_threads(), MAX_THREADS)
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)) \
            or not 1 <= n_threads <= MAX_THREADS:
        raise ValueError(f"n_threads must be an integer from 1 to {MAX_THREADS}, got {n_threads!r}")
    return int(n_threads)


def parallel_sum(x, n_threads=None):
    """Sum a float32 vector on ``n_threads`` threads; returns (sum, threads that took part).

    The sum is accumulated in double per thread, so it matches ``math.fsum`` closely
    whatever the split; the second value shows the team size really used.
    """
    cdef const float[::1] v = np.ascontiguousarray(x, dtype=np.float32)
    cdef int nt = check_threads(n_threads)
    cdef Py_ssize_t n = v.shape[0], i
    cdef double total = 0.0
    cdef int[::1] seen = np.zeros(nt, dtype=np.int32)
    with nogil, parallel(num_threads=nt):
        seen[omp_get_thread_num()] = 1
        for i in prange(n, schedule="static"):
            total += v[i]
    return total, int(np.asarray(seen).sum())
