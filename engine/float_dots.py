"""Float dot products in the summation orders of ggml's AVX2 kernels, in NumPy.

``float_dots`` is ggml_vec_dot_f32/_f16/_bf16 for one activation row and llamafile's
tinyBLAS for several; ``fma_chain`` is the fused multiply-add accumulation that the
quantised kernels (``engine.quant_dots``) share; ``FloatDot`` is the matrix product of an
F32, F16 or BF16 weight.
"""
from __future__ import annotations

import numpy as np

from . import quants
from .ggml_math import fma_f32, hsum8
from .operands import Weight
from .quants import GGMLType


def float_dots(x: np.ndarray, w: np.ndarray, type_: GGMLType = GGMLType.F32, n_rows: int | None = None) -> np.ndarray:
    """x @ w.T in fp32 with the summation order of ggml's AVX2 kernels: (..., n, k) x (..., m, k) -> (..., n, m).

    ``type_`` (F32, F16 or BF16) is what ggml multiplies, and picks its one-row kernel;
    ``n_rows``: the rows of the whole weight when ``w`` is a slice of it (tinyBLAS decides
    on the whole matrix).

    One activation row (n == 1), or a shape tinyBLAS declines, goes through
    ggml_vec_dot_f32/_f16/_bf16: four 8-lane FMA accumulators over steps of 32, added
    pairwise, then the 8 lanes in a fixed tree (bf16: hsum8's); a tail past the last
    multiple of 32 is added one product at a time (in double for f16 and bf16 data).  Several rows go through
    llamafile's tinyBLAS: one 8-lane FMA accumulator over steps of 8, then its horizontal
    sum.  Fused multiply-adds are computed in double and rounded once to fp32.
    """
    n, k = x.shape[-2], x.shape[-1]
    tiny_blas = n > 1 and k % 8 == 0 and (w.shape[-2] if n_rows is None else n_rows) % 4 == 0  # what tinyBLAS accepts
    lanes = 8 if tiny_blas else 32
    body = k - k % lanes
    xs = x[..., :, None, :].astype(np.float64)                            # (..., n, 1, k)
    ws = w[..., None, :, :].astype(np.float64)                            # (..., 1, m, k)
    acc = np.zeros(np.broadcast_shapes(xs.shape[:-1], ws.shape[:-1]) + (lanes,), np.float64)  # (..., n, m, lanes)
    for c in range(0, body, lanes):
        acc = (acc + xs[..., c:c + lanes] * ws[..., c:c + lanes]).astype(np.float32).astype(np.float64)
    acc = acc.astype(np.float32)
    if tiny_blas:
        return hsum8(acc)
    octet = (acc[..., 0:8] + acc[..., 16:24]) + (acc[..., 8:16] + acc[..., 24:32])  # (..., n, m, 8)
    if type_ == GGMLType.BF16:
        total = hsum8(octet)                                              # (..., n, m)
    else:
        quad = octet[..., :4] + octet[..., 4:]
        total = (quad[..., 0] + quad[..., 1]) + (quad[..., 2] + quad[..., 3])  # (..., n, m)
    if body == k:
        return total
    tail = xs[..., body:] * ws[..., body:]                                # (..., n, m, k - body)
    if type_ != GGMLType.F32:
        sum_ = total.astype(np.float64)
        for i in range(k - body):
            sum_ = sum_ + tail[..., i]
        return sum_.astype(np.float32)
    for i in range(k - body):
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

    def rows(self, data: np.ndarray, w: Weight, x: np.ndarray) -> np.ndarray:
        return float_dots(x, quants.dequantize(data, self.type), self.type, w.n_out)  # (n, rows)
