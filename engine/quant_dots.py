"""Quantised dot products in the orders of llama.cpp's AVX2 or AVX-512 kernels, in NumPy.

``QuantDot`` quantises the activations to the weight type's ``vec_dot_type`` and takes
ggml's integer block dot products, then accumulates them with the fused multiply-adds of
the kernel that the type and batch size select: vec_dot, tinyBLAS, the repacked Q4_0/Q4_K
kernels and on AVX-512 the repacked Q2_K one (``Weight.repacked``), the tiled K-quant kernel
(``tiled``).  ``DOTS`` gives each weight type its dot product, ``MATRIX_TYPES`` the types llamanp multiplies.
"""
from __future__ import annotations

import numpy as np

from . import quants
from .float_dots import FloatDot, fma_chain
from .ggml_math import fma_f32, hsum8, to_bf16, to_f16
from .operands import Weight
from .quants import GGMLType


class QuantDot:
    """Quantised weights: activations quantised to ``vec_dot_type``, then ggml's integer block dot products.

    Per block ggml multiplies the integer quants exactly (int32 sums of int8 x small-int
    products, weighted by the integer sub-block scales of the K-quants) and only then
    applies the float scales: out = sum over blocks of (d_x * d_w) * isum, minus
    (d_x * dmin_w) * sum(mins * bsums_x) for Q2_K/Q4_K/Q5_K, plus m_w * s_x for Q4_1/Q5_1.
    Here the per-sub-block integer sums are float32 matmuls of small integers (exact:
    every partial sum stays below 2^24), their scaled sums are exact in float64, and the
    float accumulation over blocks runs in double.
    """

    def __init__(self, vec_dot_type: GGMLType, quantize):
        self.vec_dot_type = vec_dot_type
        self.quantize = quantize

    def prepare(self, x: np.ndarray, repacked: bool = False):
        grouped = repacked and self.vec_dot_type == GGMLType.Q8_K
        raw = self.quantize(x, grouped=True) if grouped else self.quantize(x)   # (n, row bytes)
        return quants.unpack(raw, self.vec_dot_type)

    def rows(self, data: np.ndarray, w: Weight, x, isa: str) -> np.ndarray:
        wq = quants.unpack(data, w.type)
        dxw = x.d.T[:, :, None] * wq.d.T[:, None, :]                         # (nb, n, rows)
        match wq:
            case quants.Blocks(_, q) if w.repacked(isa):
                # q4_0_8x8 kernels: one fma per block of its whole integer sum
                return fma_chain(_sub_block_dots(x.q, q, 1)[:, 0], dxw)      # (n, rows)
            case quants.Blocks(_, q):
                # vec_dot_q*_0_q8_0 and tinyBLAS: 8 lanes of 4 products each, one fma per block, then hsum
                lanes = np.moveaxis(_sub_block_dots(x.q, q, 8), 1, -1)       # (nb, n, rows, 8)
                return hsum8(fma_chain(dxw[..., None], lanes))               # (n, rows)
            case quants.BlocksWithMin(_, m, q):
                # vec_dot_q4_1/q5_1_q8_1: the 8-lane sums as above, plus m_w * s_x fma'd into a scalar
                lanes = np.moveaxis(_sub_block_dots(x.q, q, 8), 1, -1)       # (nb, n, rows, 8)
                return hsum8(fma_chain(dxw[..., None], lanes)) + fma_chain(m.T[:, None, :], x.s.T[:, :, None])
            case quants.SuperBlocks(_, scales, q) if tiled(w, x.q.shape[0], isa):
                return _tiled(wq, _scaled_sum(_sub_block_dots(x.q, q, scales.shape[-1]), scales), None, x.d)
            case quants.SuperBlocks(_, scales, q):
                # vec_dot_q3_K/q6_K_q8_K: 8 lanes of scaled sums, one fma per super-block, then hsum
                lanes = _q6_K_lanes(x, q, scales) if w.type == GGMLType.Q6_K else \
                    _chunk_lanes(x.q, q, scales[:, :, _PAIRED_SCALES]).astype(np.float32)
                return hsum8(fma_chain(dxw[..., None], lanes))               # (n, rows)
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q) if w.repacked(isa):
                return _k_repacked(x, q, scales, mins, dxw, x.d.T[:, :, None] * dmin.T[:, None, :])
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q) \
                    if w.type == GGMLType.Q5_K and not tiled(w, x.q.shape[0], isa):
                # vec_dot_q5_K_q8_K: 8 lanes fma'd per super-block, the mins summed apart in a scalar
                lanes = _chunk_lanes(x.q, q, scales[..., np.arange(8)[:, None].repeat(8, axis=1)])
                mins_dot = _scaled_sum(_sub_block_sums(x.bsums, 8).transpose(1, 2, 0)[..., None], mins)  # (nb, n, rows)
                neg_dmin = -(x.d.T[:, :, None] * dmin.T[:, None, :])            # (nb, n, rows)
                return hsum8(fma_chain(dxw[..., None], lanes)) + fma_chain(neg_dmin, mins_dot.astype(np.float32))
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q) \
                    if w.type == GGMLType.Q2_K and not tiled(w, x.q.shape[0], isa):
                # vec_dot_q2_K_q8_K: per super-block one fma of the 8 min lanes, then one of the 8 scaled lanes
                lanes = _chunk_lanes(x.q, q, scales[:, :, _PAIRED_SCALES]).astype(np.float32)  # (nb, n, rows, 8)
                min_lanes = _pair_lanes(x.bsums, mins)                         # (nb, n, rows, 8)
                neg_dmin = -(x.d.T[:, :, None] * dmin.T[:, None, :])            # (nb, n, rows)
                scale = np.stack([neg_dmin, dxw], axis=1).reshape(-1, *dxw.shape[1:])[..., None]  # (2nb, n, rows, 1)
                return hsum8(fma_chain(scale, np.stack([min_lanes, lanes], axis=1).reshape(-1, *lanes.shape[1:])))
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q):
                bsums = _sub_block_sums(x.bsums, mins.shape[-1])              # (n, nb, n_sub)
                mins_dot = _scaled_sum(bsums.transpose(1, 2, 0)[..., None], mins)  # (nb, n, rows)
                scaled_dot = _scaled_sum(_sub_block_dots(x.q, q, scales.shape[-1]), scales)  # (nb, n, rows)
                if tiled(w, x.q.shape[0], isa):
                    return _tiled(wq, scaled_dot, mins_dot, x.d)
                dx_dmin = x.d.T[:, :, None] * dmin.T[:, None, :]              # (nb, n, rows)
                return (dxw * scaled_dot - dx_dmin * mins_dot).sum(axis=0).astype(np.float32)  # (n, rows)


def tiled(w: Weight, n: int, isa: str = "avx2") -> bool:
    """Whether ggml's tiled K-quant kernel takes this product: 8+ activation rows, a K-quant not repacked."""
    return n >= 8 and w.type in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K) \
        and not w.repacked(isa)


def _tiled(wq, scaled_dot: np.ndarray, mins_dot: np.ndarray | None, dx: np.ndarray) -> np.ndarray:
    """The tiled kernel's float steps per super-block: r = d_w * S (minus dmin_w * M, fused), acc = fma(r, d_x, acc)."""
    r = wq.d.T[:, None, :] * scaled_dot.astype(np.float32)               # (nb, n, rows)
    if mins_dot is not None:
        r = fma_f32(-wq.dmin.T[:, None, :], mins_dot.astype(np.float32), r)
    return fma_chain(r, dx.T[:, :, None])                                 # (n, rows)


def _k_repacked(x, q, scales, mins, dxw, dx_dmin) -> np.ndarray:
    """The q4_K_8x8 and q2_K_8x8 kernels: one fma per part for the scaled sums, one for the mins,
    then their difference.

    Activation rows in whole groups of four go through the gemm kernel, which takes a part
    per 64 weights for Q4_K (two sub-blocks), per 128 for Q2_K (eight); the rest through the
    gemv kernel, a part per super-block.
    """
    n, n_sub = x.q.shape[0], scales.shape[-1]
    sub_dots = _sub_block_dots(x.q, q, n_sub)                              # (nb, n_sub, n, rows)
    bsums = _sub_block_sums(x.bsums, n_sub).transpose(1, 2, 0)[..., None]  # (nb, n_sub, n, 1)
    out = np.empty((n, q.shape[0]), np.float32)                           # (n, rows)
    gemm_parts = 4 if n_sub == 8 else 2
    for rows, parts in ((slice(0, n - n % 4), gemm_parts), (slice(n - n % 4, n), 1)):
        if rows.start == rows.stop:
            continue
        scaled = _scaled_sum(sub_dots[:, :, rows], scales, parts).astype(np.float32)
        mins_dot = _scaled_sum(bsums[:, :, rows], mins, parts).astype(np.float32)
        if parts == 1:
            scaled, mins_dot = scaled[:, None], mins_dot[:, None]           # (nb, parts, n', rows)
        flat = (-1, *scaled.shape[2:])                                     # (nb * parts, n', rows)
        scale = np.repeat(dxw[:, rows], parts, axis=0)
        scale_min = np.repeat(dx_dmin[:, rows], parts, axis=0)
        out[rows] = fma_chain(scaled.reshape(flat), scale) - fma_chain(mins_dot.reshape(flat), scale_min)
    return out


def _q6_K_lanes(x, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The 8 int32 lanes of ggml_vec_dot_q6_K_q8_K (AVX2) per super-block: (nb, n, rows, 8), exact.

    Lane l holds, over the eight 32-weight chunks c, scale[2c + l // 4] times the products of
    weights 4l..4l+3 of the chunk with the quants unshifted (0..63), minus
    32 * (bsums[2l] * scale[2l] + bsums[2l+1] * scale[2l+1]), which undoes the shift.
    """
    lanes = _chunk_lanes(x.q, q.astype(np.int16) + 32, scales[:, :, _PAIRED_SCALES])
    return (lanes - 32 * _pair_lanes(x.bsums, scales)).astype(np.float32)


# chunk c, lane l of a 16-sub-block K-quant reads scale 2c + l // 4 (the sub-block of weights 4l..4l+3)
_PAIRED_SCALES = 2 * np.arange(8)[:, None] + np.arange(8)[None, :] // 4


def _pair_lanes(bsums: np.ndarray, per_sub: np.ndarray) -> np.ndarray:
    """Lane l = bsums[2l] * per_sub[2l] + bsums[2l+1] * per_sub[2l+1] per super-block: (nb, n, rows, 8) float64."""
    n, nb, _ = bsums.shape
    return np.einsum("nblk,mblk->bnml", bsums.reshape(n, nb, 8, 2).astype(np.float64),
                     per_sub.reshape(per_sub.shape[0], nb, 8, 2).astype(np.float64))


def _chunk_lanes(xq: np.ndarray, q: np.ndarray, chunk_scale: np.ndarray) -> np.ndarray:
    """AVX2 K-quant lanes: lane l sums, over the eight 32-weight chunks c of a super-block,
    chunk_scale[row, sb, c, l] times the products of weights 4l..4l+3 of chunk c: (nb, n, rows, 8) float64."""
    n, nb, _ = xq.shape
    dots = _sub_block_dots(xq, q, 64).reshape(nb, 8, 8, n, q.shape[0])   # (nb, chunk, lane, n, rows)
    weights = np.moveaxis(chunk_scale, 0, -1)[:, :, :, None, :].astype(np.float64)  # (nb, chunk, lane, 1, rows)
    return np.moveaxis((dots * weights).sum(axis=1), 1, -1)                # (nb, n, rows, lane)


def _sub_block_dots(xq: np.ndarray, wq: np.ndarray, n_sub: int) -> np.ndarray:
    """Integer dot products of each sub-block: (n, nb, B) x (rows, nb, B) -> (nb, n_sub, n, rows) float32."""
    n, nb, size = xq.shape
    rows = wq.shape[0]
    xs = xq.reshape(n, nb * n_sub, size // n_sub).transpose(1, 0, 2).astype(np.float32)    # (nb*n_sub, n, B/n_sub)
    ws = wq.reshape(rows, nb * n_sub, size // n_sub).transpose(1, 2, 0).astype(np.float32)  # (nb*n_sub, B/n_sub, rows)
    return np.matmul(xs, ws).reshape(nb, n_sub, n, rows)


def _scaled_sum(sub_dots: np.ndarray, scales: np.ndarray, parts: int = 1) -> np.ndarray:
    """sum_j scales[row, j] * sub_dots[j, ..., row] over each of ``parts`` equal runs of sub-blocks,
    exact in float64: (nb, n_sub, n, rows) -> (nb, n, rows), or (nb, parts, n, rows) when parts > 1."""
    weights = scales.transpose(1, 2, 0)[:, :, None, :].astype(np.float64)  # (nb, n_sub, 1, rows)
    products = sub_dots * weights                                          # (nb, n_sub, n, rows)
    if parts == 1:
        return products.sum(axis=1)
    return products.reshape(products.shape[0], parts, -1, *products.shape[2:]).sum(axis=2)


def _sub_block_sums(bsums: np.ndarray, n_sub: int) -> np.ndarray:
    """Q8_K's sums of 16 quants regrouped into ``n_sub`` sub-block sums: (n, nb, n_sub) int32."""
    return bsums.astype(np.int32).reshape(*bsums.shape[:-1], n_sub, -1).sum(axis=-1)


_Q8_0 = QuantDot(GGMLType.Q8_0, quants.quantize_q8_0)
_Q8_1 = QuantDot(GGMLType.Q8_1, quants.quantize_q8_1)
_Q8_K = QuantDot(GGMLType.Q8_K, quants.quantize_q8_K)

# each weight type's dot product, keyed like ggml's type_traits_cpu[type].vec_dot_type
DOTS: dict[GGMLType, object] = {
    GGMLType.F32: FloatDot(GGMLType.F32, lambda x: x),
    GGMLType.F16: FloatDot(GGMLType.F16, to_f16),
    GGMLType.BF16: FloatDot(GGMLType.BF16, to_bf16),
    GGMLType.Q4_0: _Q8_0,
    GGMLType.Q5_0: _Q8_0,
    GGMLType.Q8_0: _Q8_0,
    GGMLType.Q4_1: _Q8_1,
    GGMLType.Q5_1: _Q8_1,
    GGMLType.Q2_K: _Q8_K,
    GGMLType.Q3_K: _Q8_K,
    GGMLType.Q4_K: _Q8_K,
    GGMLType.Q5_K: _Q8_K,
    GGMLType.Q6_K: _Q8_K,
}

# the weight types whose matrix products llamanp computes (model.py rejects the others at load)
MATRIX_TYPES = frozenset(DOTS)
