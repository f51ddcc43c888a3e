"""Float dot products in the summation orders of ggml's AVX2 or AVX-512 kernels, in NumPy.

``float_dots`` is ggml_vec_dot_f32/_f16/_bf16 for one activation row and llamafile's
tinyBLAS for several; ``fma_chain`` is the fused multiply-add accumulation that the
quantised kernels (``engine.quant_dots``) share; ``FloatDot`` is the matrix product of an
F32, F16 or BF16 weight.
"""
from __future__ import annotations

import numpy as np

from . import quants
from .ggml_math import fma_f32, hsum8, hsum16
from .operands import Weight
from .quants import FLOAT_TYPES, GGMLType


def float_dots(x: np.ndarray, w: np.ndarray, type_: GGMLType = GGMLType.F32, n_rows: int | None = None,
               isa: str = "avx2") -> np.ndarray:
    """x @ w.T in fp32 with the summation order of ggml's kernels for ``isa``: (..., n, k) x (..., m, k) -> (..., n, m).

    ``type_`` (F32, F16 or BF16) is what ggml multiplies, and picks its one-row kernel;
    ``n_rows``: the rows of the whole weight when ``w`` is a slice of it (tinyBLAS decides
    on the whole matrix).

    One activation row (n == 1), or a shape tinyBLAS declines, goes through
    ggml_vec_dot_f32/_f16/_bf16 (``_vec_dot``).  Several rows go through llamafile's
    tinyBLAS (``_tiny_blas``): one accumulator of ``lanes`` fp32 lanes per output, then its
    horizontal sum.  Fused multiply-adds are computed in double and rounded once to fp32.
    """
    n, k = x.shape[-2], x.shape[-1]
    step = _TINY_BLAS_STEP[isa, type_]
    if n > 1 and k % step == 0 and (w.shape[-2] if n_rows is None else n_rows) % 4 == 0:  # what tinyBLAS accepts
        return _tiny_blas(x, w, type_, isa)
    return _vec_dot(x, w, type_, isa)


# the k elements tinyBLAS takes per step (it declines other row lengths): 8 fp32 lanes on AVX2; on
# AVX-512 16 lanes, or for BF16 32 elements into 16 lanes (vdpbf16ps)
_TINY_BLAS_STEP = {("avx2", t): 8 for t in FLOAT_TYPES} | {("avx512", t): 16 for t in FLOAT_TYPES} \
    | {("avx512", GGMLType.BF16): 32}


def _products(x: np.ndarray, w: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The exact products x[..., i, lo:hi] * w[..., j, lo:hi] in double: (..., n, m, hi - lo)."""
    return x[..., :, None, lo:hi].astype(np.float64) * w[..., None, :, lo:hi].astype(np.float64)


def _fma_lanes(x: np.ndarray, w: np.ndarray, lanes: int, body: int) -> np.ndarray:
    """``lanes`` fp32 accumulators, acc = fma(x, w, acc) over steps of ``lanes`` up to ``body``: (..., n, m, lanes)."""
    acc = np.zeros(np.broadcast_shapes(x.shape[:-2] + (x.shape[-2], 1), w.shape[:-2] + (1, w.shape[-2]))
                   + (lanes,), np.float64)
    for c in range(0, body, lanes):
        acc = (acc + _products(x, w, c, c + lanes)).astype(np.float32).astype(np.float64)
    return acc.astype(np.float32)


def _dpbf16_lanes(x: np.ndarray, w: np.ndarray, body: int) -> np.ndarray:
    """16 fp32 accumulators fed by vdpbf16ps over steps of 32 bf16 values up to ``body``: lane j adds
    the (exact) product of element 2j+1, rounds, then that of element 2j, rounds: (..., n, m, 16)."""
    acc = np.zeros(np.broadcast_shapes(x.shape[:-2] + (x.shape[-2], 1), w.shape[:-2] + (1, w.shape[-2]))
                   + (16,), np.float32)
    for c in range(0, body, 32):
        p = _products(x, w, c, c + 32)                                     # (..., n, m, 32)
        acc = (acc + p[..., 1::2]).astype(np.float32)
        acc = (acc + p[..., 0::2]).astype(np.float32)
    return acc


def _tiny_blas(x: np.ndarray, w: np.ndarray, type_: GGMLType, isa: str) -> np.ndarray:
    """llamafile's tinyBLAS: one accumulator per output over the whole row, then its horizontal sum."""
    k = x.shape[-1]
    if isa == "avx2":
        return hsum8(_fma_lanes(x, w, 8, k))
    lanes = _dpbf16_lanes(x, w, k) if type_ == GGMLType.BF16 else _fma_lanes(x, w, 16, k)
    return hsum16(lanes)


def _vec_dot(x: np.ndarray, w: np.ndarray, type_: GGMLType, isa: str) -> np.ndarray:
    """ggml_vec_dot_f32/_f16/_bf16 for each pair of rows.

    AVX2: four 8-lane FMA accumulators over steps of 32, added pairwise, then the 8 lanes
    in a fixed tree (bf16: hsum8's).  AVX-512: four 16-lane accumulators over steps of 64
    (bf16: two vdpbf16ps accumulators, each reduced on its own into the double sum), then
    _mm512_reduce_add_ps.  A tail past the last whole step is added one product at a time
    (in double for f16 and bf16 data).
    """
    k = x.shape[-1]
    if isa == "avx512" and type_ == GGMLType.BF16:
        body = k - k % 64
        c1, c2 = (hsum16(_dpbf16_lanes(_half_steps(x, body, h), _half_steps(w, body, h), body // 2)) for h in (0, 1))
        return _add_tail(c1.astype(np.float64) + c2, x, w, body, type_)
    width = 16 if isa == "avx512" else 8
    body = k - k % (4 * width)
    acc = _fma_lanes(x, w, 4 * width, body)                                # (..., n, m, 4 * width)
    a = [acc[..., i * width:(i + 1) * width] for i in range(4)]
    vector = (a[0] + a[2]) + (a[1] + a[3])                                  # (..., n, m, width)
    if width == 16:
        total = hsum16(vector)
    elif type_ == GGMLType.BF16:
        total = hsum8(vector)
    else:
        quad = vector[..., :4] + vector[..., 4:]
        total = (quad[..., 0] + quad[..., 1]) + (quad[..., 2] + quad[..., 3])  # (..., n, m)
    return _add_tail(total, x, w, body, type_)


def _half_steps(a: np.ndarray, body: int, h: int) -> np.ndarray:
    """Elements [64t + 32h, 64t + 32h + 32) of each row for every step t below ``body``, one after another."""
    return a[..., :body].reshape(*a.shape[:-1], body // 64, 2, 32)[..., h, :].reshape(*a.shape[:-1], body // 2)


def _add_tail(total: np.ndarray, x: np.ndarray, w: np.ndarray, body: int, type_: GGMLType) -> np.ndarray:
    """The vector part ``total`` plus the products past ``body`` one at a time: fused into the fp32 sum
    for F32 data, in double for F16 and BF16 (ggml_float sums)."""
    tail = _products(x, w, body, x.shape[-1])                              # (..., n, m, k - body)
    if type_ != GGMLType.F32:
        sum_ = total.astype(np.float64)
        for i in range(tail.shape[-1]):
            sum_ = sum_ + tail[..., i]
        return sum_.astype(np.float32)
    for i in range(tail.shape[-1]):
        total = (total.astype(np.float64) + tail[..., i]).astype(np.float32)
    return total


def fma_chain(scales: np.ndarray, values: np.ndarray) -> np.ndarray:
    """acc = fma(scales[b], values[b], acc) over the leading axis, from acc = 0, in fp32."""
    acc = np.zeros(np.broadcast_shapes(scales.shape[1:], values.shape[1:]), np.float32)
    for scale, value in zip(scales, values):
        acc = fma_f32(scale, value, acc)
    return acc


class FloatDot:
    """F32 weights: fp32 products; F16 and BF16 weights: activations rounded to the weights' type first.

    All sum in ggml's own order (``float_dots``), because one ulp here can flip the f16
    rounding of an F16 model's next activations or of a cached key, and such flips add up.
    """

    def __init__(self, type_: GGMLType, round_activations):
        self.type = type_
        self.round_activations = round_activations

    def prepare(self, x: np.ndarray, repacked: bool = False) -> np.ndarray:
        return self.round_activations(x)

    def rows(self, data: np.ndarray, w: Weight, x: np.ndarray, isa: str) -> np.ndarray:
        return float_dots(x, quants.dequantize(data, self.type), self.type, w.n_out, isa)  # (n, rows)
