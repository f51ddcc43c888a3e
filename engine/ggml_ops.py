"""The numerical operations of a LLaMA forward pass, computed the way ggml's CPU backend computes them.

Each op mirrors ggml's rounding where it decides the result: matrix products quantise
their activations to the weight type's ``vec_dot_type`` (f16 for F16 weights, Q8_0 or
Q8_1 for the 32-weight quants, Q8_K for the K-quants) and take integer block dot
products with fp32 scaling; the attention rounds q and the softmax probabilities to
f16 before multiplying them with the f16 KV cache; RMSNorm sums squares in double.
Summation order inside a dot product is not mirrored: it moves results by an ulp,
while a wrongly rounded int8 activation moves them by a quantisation step.

``NumpyBackend`` is the reference; a compiled backend offers the same methods with the
same shapes and dtypes (all activations float32, C-contiguous):

    get_rows(w, ids)                       (n,) int       -> (n, w.n_in)
    matmul(w, x)                           (n, w.n_in)    -> (n, w.n_out)
    rms_norm(x, weight, eps)               (n, d), (d,)   -> (n, d)
    rope(x, positions, rope)               (n, heads, hd) -> (n, heads, hd)
    attention(q, k_cache, v_cache, start, scale)
        q (n, n_heads, hd), caches float16 (n_kv_heads, n_ctx, hd) already holding
        positions [0, start + n)           -> (n, n_heads * hd)
    swiglu(gate, up)                       (n, f), (n, f) -> (n, f)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import quants
from .quants import GGMLType

CHUNK_ELEMENTS = 1 << 22  # bound on weight rows x activation rows x sub-blocks per step
MAX_CHUNK_ROWS = 4096     # weight rows unpacked at a time, so no whole matrix is ever converted


@dataclass(frozen=True)
class Weight:
    """A 2-D weight used in place from the file: ``data`` is the mmap view that ``GGUFFile.tensor`` gives."""
    name: str
    type: GGMLType
    n_in: int    # row length (ggml ne0)
    n_out: int   # number of rows (ggml ne1)
    data: np.ndarray  # F32/F16: (n_out, n_in) typed; quantised: (n_out, bytes_per_row) uint8


@dataclass(frozen=True)
class Rope:
    """RoPE in ggml's NORM mode (adjacent pairs) over the first ``n_dims`` of each head."""
    n_dims: int
    freq_base: float
    freq_scale: float = 1.0  # 1 / linear scaling factor


def to_f16(x: np.ndarray) -> np.ndarray:
    """Round to half precision (nearest-even, as F16C does) and widen back to float32."""
    return x.astype(np.float16).astype(np.float32)


def rope_cos_sin(positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's angles, (n, n_dims/2) each, as ggml's rope cache builds them.

    ggml starts from theta = position and multiplies by powf(base, -2/n_dims) once per
    pair, in float32, so the angles carry the same accumulated rounding.
    """
    theta_scale = np.float32(np.float64(rope.freq_base) ** np.float64(np.float32(-2.0) / np.float32(rope.n_dims)))
    theta = np.empty((len(positions), rope.n_dims // 2), np.float32)       # (n, n_dims/2)
    theta[:, 0] = positions.astype(np.float32)
    for i in range(1, rope.n_dims // 2):
        theta[:, i] = theta[:, i - 1] * theta_scale
    theta = np.float32(rope.freq_scale) * theta
    angles = theta.astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class NumpyBackend:
    """The readable reference implementation of every op."""

    name = "numpy"

    def __init__(self, n_threads: int | None = None):
        self.n_threads = n_threads  # NumPy decides its own threading; kept for a uniform interface

    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``w`` as float32 (an embedding lookup)."""
        rows = w.data[ids]                                                  # (n, bytes or n_in)
        if w.type in (GGMLType.F32, GGMLType.F16):
            return rows.astype(np.float32)
        return quants.dequantize(rows, w.type, w.n_in).astype(np.float32)   # (n, n_in)

    def matmul(self, w: Weight, x: np.ndarray) -> np.ndarray:
        """``x @ w.T`` with ggml's activation rounding and block arithmetic for ``w``'s type."""
        dot = _DOTS.get(w.type)
        if dot is None:
            raise NotImplementedError(f"{w.name}: matrix products with {w.type.name} weights are not supported")
        xq = dot.prepare(x, repacked=True) if repacked(w) else dot.prepare(x)
        out = np.empty((x.shape[0], w.n_out), np.float32)                  # (n, n_out)
        chunk = min(MAX_CHUNK_ROWS, max(8, CHUNK_ELEMENTS // (x.shape[0] * max(1, w.n_in // 16))))
        for r in range(0, w.n_out, chunk):
            out[:, r:r + chunk] = dot.rows(w.data[r:r + chunk], w, xq)
        return out

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x / sqrt(mean(x^2) + eps) * weight; the sum of squares in double, the scale in float."""
        mean = ((x * x).astype(np.float64).sum(axis=-1) / x.shape[-1]).astype(np.float32)  # (n,)
        scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
        return x * scale[:, None] * weight

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        """Rotate adjacent pairs (x[2i], x[2i+1]) of each head by position * theta_i."""
        cos, sin = rope_cos_sin(positions, rope)                            # (n, n_dims/2)
        cos, sin = cos[:, None, :], sin[:, None, :]                         # (n, 1, n_dims/2)
        x0 = x[..., 0:rope.n_dims:2]                                        # (n, heads, n_dims/2)
        x1 = x[..., 1:rope.n_dims:2]
        out = x.copy()
        out[..., 0:rope.n_dims:2] = x0 * cos - x1 * sin
        out[..., 1:rope.n_dims:2] = x0 * sin + x1 * cos
        return out

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int, scale: float) -> np.ndarray:
        """Causal softmax(q·K^T * scale)·V over the cache, each query head reading kv head h // group.

        q and the probabilities are rounded to f16 like the cache they multiply; their
        products are exact and summed in double, so each query's result does not depend
        on how many queries share the call.
        """
        n, n_heads, head_dim = q.shape
        n_kv_heads = k_cache.shape[0]
        group = n_heads // n_kv_heads
        n_keys = start + n
        keys = k_cache[:, :n_keys].astype(np.float64)                        # (n_kv_heads, n_keys, hd)
        values = v_cache[:, :n_keys].astype(np.float64)                      # (n_kv_heads, n_keys, hd)
        qg = to_f16(q).transpose(1, 0, 2).reshape(n_kv_heads, group * n, head_dim)  # (n_kv_heads, group*n, hd)
        scores = (qg.astype(np.float64) @ keys.transpose(0, 2, 1)).astype(np.float32)  # (n_kv_heads, group*n, n_keys)
        scores = scores.reshape(n_heads, n, n_keys) * np.float32(scale)      # (n_heads, n, n_keys)
        future = np.arange(n_keys)[None, :] > (start + np.arange(n))[:, None]  # (n, n_keys)
        scores[:, future] = -np.inf
        probs = softmax(scores)                                                # (n_heads, n, n_keys)
        pg = to_f16(probs).reshape(n_kv_heads, group * n, n_keys)             # (n_kv_heads, group*n, n_keys)
        out = (pg.astype(np.float64) @ values).astype(np.float32)             # (n_kv_heads, group*n, hd)
        out = out.reshape(n_heads, n, head_dim).transpose(1, 0, 2)            # (n, n_heads, hd)
        return np.ascontiguousarray(out).reshape(n, n_heads * head_dim)       # (n, n_heads*hd)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """silu(gate) * up, with silu(g) = g / (1 + exp(-g))."""
        return gate / (np.float32(1.0) + np.exp(-gate)) * up


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis: exp in float32, the normaliser summed in double."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    inv = (1.0 / e.astype(np.float64).sum(axis=-1, keepdims=True)).astype(np.float32)
    return e * inv


class _FloatDot:
    """F32 weights: a plain product; F16 weights: activations rounded to f16 first.

    Each activation row gets its own matrix-vector product, so a row's result does not
    depend on how many rows share the call (BLAS picks different kernels for one row and
    for many, and an ulp there can flip the f16 rounding of a cached key).
    """

    def __init__(self, round_to_f16: bool):
        self.round_to_f16 = round_to_f16

    def prepare(self, x: np.ndarray, repacked: bool = False) -> np.ndarray:
        return to_f16(x) if self.round_to_f16 else x

    def rows(self, data: np.ndarray, w: Weight, x: np.ndarray) -> np.ndarray:
        weights = data.astype(np.float32, copy=False)                         # (rows, n_in)
        return np.stack([weights @ row for row in x])                         # (n, rows)


class _QuantDot:
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
        raw = self.quantize(x, repacked=True) if repacked else self.quantize(x)   # (n, row bytes)
        return quants.unpack(raw, self.vec_dot_type)

    def rows(self, data: np.ndarray, w: Weight, x) -> np.ndarray:
        wq = quants.unpack(data, w.type)
        dxw = x.d.T[:, :, None] * wq.d.T[:, None, :]                         # (nb, n, rows)
        match wq:
            case quants.Blocks(_, q):
                acc = dxw * _sub_block_dots(x.q, q, 1)[:, 0]
            case quants.BlocksWithMin(_, m, q):
                acc = dxw * _sub_block_dots(x.q, q, 1)[:, 0] + x.s.T[:, :, None] * m.T[:, None, :]
            case quants.SuperBlocks(_, scales, q):
                acc = dxw * _scaled_sum(_sub_block_dots(x.q, q, scales.shape[-1]), scales)
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q):
                dx_dmin = x.d.T[:, :, None] * dmin.T[:, None, :]              # (nb, n, rows)
                bsums = _sub_block_sums(x.bsums, mins.shape[-1])              # (n, nb, n_sub)
                mins_dot = _scaled_sum(bsums.transpose(1, 2, 0)[..., None], mins)  # (nb, n, rows)
                acc = dxw * _scaled_sum(_sub_block_dots(x.q, q, scales.shape[-1]), scales) - dx_dmin * mins_dot
        return acc.sum(axis=0).astype(np.float32)                            # (n, rows)


def _sub_block_dots(xq: np.ndarray, wq: np.ndarray, n_sub: int) -> np.ndarray:
    """Integer dot products of each sub-block: (n, nb, B) x (rows, nb, B) -> (nb, n_sub, n, rows) float32."""
    n, nb, size = xq.shape
    rows = wq.shape[0]
    xs = xq.reshape(n, nb * n_sub, size // n_sub).transpose(1, 0, 2).astype(np.float32)    # (nb*n_sub, n, B/n_sub)
    ws = wq.reshape(rows, nb * n_sub, size // n_sub).transpose(1, 2, 0).astype(np.float32)  # (nb*n_sub, B/n_sub, rows)
    return np.matmul(xs, ws).reshape(nb, n_sub, n, rows)


def _scaled_sum(sub_dots: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """sum_j scales[row, j] * sub_dots[j, ..., row] per block, exact in float64: -> (nb, n, rows)."""
    weights = scales.transpose(1, 2, 0)[:, :, None, :].astype(np.float64)  # (nb, n_sub, 1, rows)
    return (sub_dots * weights).sum(axis=1)


def _sub_block_sums(bsums: np.ndarray, n_sub: int) -> np.ndarray:
    """Q8_K's sums of 16 quants regrouped into ``n_sub`` sub-block sums: (n, nb, n_sub) int32."""
    return bsums.astype(np.int32).reshape(*bsums.shape[:-1], n_sub, -1).sum(axis=-1)


_Q8_0 = _QuantDot(GGMLType.Q8_0, quants.quantize_q8_0)
_Q8_1 = _QuantDot(GGMLType.Q8_1, quants.quantize_q8_1)
_Q8_K = _QuantDot(GGMLType.Q8_K, quants.quantize_q8_K)

# each weight type's dot product, keyed like ggml's type_traits_cpu[type].vec_dot_type
_DOTS: dict[GGMLType, object] = {
    GGMLType.F32: _FloatDot(round_to_f16=False),
    GGMLType.F16: _FloatDot(round_to_f16=True),
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


def repacked(w: Weight) -> bool:
    """Whether llama.cpp's AVX2 CPU backend repacks ``w`` (Q4_K with a multiple of 8 rows, as q4_K_8x8).

    Repacked weights get their activations quantised four rows at a time, which for
    Q8_K picks the sign of the scale differently (see ``quants.quantize_q8_K``).
    """
    return w.type == GGMLType.Q4_K and w.n_out % 8 == 0

BACKENDS = {"numpy": NumpyBackend}
