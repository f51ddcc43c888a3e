"""The C library's single-precision expf, logf, log2f, powf, cosf, sinf and tanhf, bit for bit.

llama.cpp's samplers, ggml's RoPE and its GELU table call these f32 functions, and glibc's are not correctly
rounded (expf is off by one unit in the last place for about 1 value in 1700,
logf and log2f more often), so rounding NumPy's float64 results would differ
now and then.  ``expf`` over whole vocabularies computes in float64 and hands
only the values lying near an f32 rounding boundary to the C library; the
others are called in the C library directly, one value at a time, so callers
keep them to short arrays.
"""
import ctypes
import ctypes.util

import numpy as np

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))

# glibc's expf is within 1.69 * 2**-34 (relative) of exp before its final rounding, so a float64 exp
# further than this from an f32 rounding boundary rounds the same way.
_EXPF_MARGIN = 2.0 ** -32


def _c_function(name: str, n_args: int):
    fn = getattr(_LIBM, name)
    fn.argtypes = [ctypes.c_float] * n_args
    fn.restype = ctypes.c_float
    return fn


_expf, _logf, _log2f, _powf = (_c_function("expf", 1), _c_function("logf", 1), _c_function("log2f", 1),
                               _c_function("powf", 2))
# of one float: RoPE's angles and the GELU table (engine.ggml_math)
cosf, sinf, tanhf = _c_function("cosf", 1), _c_function("sinf", 1), _c_function("tanhf", 1)


def _each(fn, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.array([fn(v) for v in x.ravel().tolist()], dtype=np.float32).reshape(x.shape)


def expf(x) -> np.ndarray:
    """``expf`` of each element of ``x`` (f32 in, f32 out)."""
    x = np.asarray(x, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    y = exact.astype(np.float32)
    near_boundary = (exact * (1 + _EXPF_MARGIN)).astype(np.float32) != (exact * (1 - _EXPF_MARGIN)).astype(np.float32)
    y[near_boundary] = _each(_expf, x[near_boundary])
    return y


def logf(x) -> np.ndarray:
    """``logf`` of each element of ``x``."""
    return _each(_logf, x)


def log2f(x) -> np.ndarray:
    """``log2f`` of each element of ``x``."""
    return _each(_log2f, x)


def powf(base, exponent) -> np.float32:
    """``powf(base, exponent)`` for two scalars."""
    return np.float32(_powf(float(np.float32(base)), float(np.float32(exponent))))
