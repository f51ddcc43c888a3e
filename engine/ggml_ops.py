"""The numerical operations of a LLaMA forward pass, computed the way ggml's CPU backend computes them.

Each op mirrors ggml's rounding where it decides the result: matrix products quantise
their activations to the weight type's ``vec_dot_type`` (f16 for F16 weights, bf16 for
BF16 weights, Q8_0 or Q8_1 for the 32-weight quants, Q8_K for the K-quants) and take integer block dot
products with fp32 scaling; the attention rounds q and the softmax probabilities to
f16 before multiplying them with the f16 KV cache; RMSNorm sums squares in double.

Beyond that, the fp32 steps follow the kernels llama.cpp runs on an x86 CPU, built for
AVX2 or for AVX-512 (``NumpyBackend.isa``, see ``engine.isa``), since a one-ulp difference can flip the f16 rounding of a cached key or an F16 model's next
activations, and flips add up over a prompt: float products sum in the order of
ggml_vec_dot_f32/_f16/_bf16 (one activation row) or llamafile's tinyBLAS (several rows);
quantised products accumulate their exact integer block sums with the fused
multiply-adds of the kernel that type and batch size select (vec_dot, tinyBLAS, the
repacked Q4_0/Q4_K kernels and on AVX-512 the repacked Q2_K one, the tiled K-quant
kernel); RoPE calls the C library's
cosf/sinf and fuses its rotation like the compiled code; softmax and SwiGLU use ggml's
vector exp.  The AVX-512 build differs in its float vector widths (16 lanes: the f32/f16
dots step 64 elements, tinyBLAS 16, softmax sums groups of 16, and bf16 products go
through vdpbf16ps), its vector exp, and its repacking of Q2_K; its integer dots (VNNI)
compute the same exact sums.  With these, logits on F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M and Q6_K files
come out bit-identical to llama.cpp's in our tests, and so do Q4_1, Q5_0, Q5_1, Q2_K
and Q3_K_M ones.  Only few-row products with a Q4_K matrix that llama.cpp does not
repack (rows not a multiple of 8) still sum their exact integers in plain double.

``NumpyBackend`` is the exact reference of the ops contract ``engine.backends.Backend``;
``engine.plain`` computes the same ops the textbook way.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import libm, quants
from .errors import ModelError
from .isa import check_isa
from .quants import FLOAT_TYPES, GGMLType

CHUNK_ELEMENTS = 1 << 22  # bound on weight rows x activation rows x sub-blocks per step
MAX_CHUNK_ROWS = 4096     # weight rows unpacked at a time, so no whole matrix is ever converted


@dataclass(frozen=True)
class Weight:
    """A 2-D weight used in place from the file: ``data`` is the mmap view that ``GGUFFile.tensor`` gives."""
    name: str
    type: GGMLType
    n_in: int    # row length (ggml ne0)
    n_out: int   # number of rows (ggml ne1)
    data: np.ndarray  # F32/F16: (n_out, n_in) typed; BF16 and quantised: (n_out, bytes_per_row) uint8


@dataclass(frozen=True)
class Rope:
    """RoPE over the first ``n_dims`` of each head: pairs (x[2i], x[2i+1]) in ggml's NORM mode,
    (x[i], x[i + n_dims/2]) in its NEOX mode."""
    n_dims: int
    freq_base: float
    freq_scale: float = 1.0  # 1 / linear scaling factor
    freq_factors: tuple[float, ...] | None = None  # (n_dims/2,) divisors of each pair's theta: Llama 3's rope_freqs
    neox: bool = False

    def pairs(self) -> tuple[slice, slice]:
        """Where each pair's first and second values lie in a head."""
        if self.neox:
            return slice(0, self.n_dims // 2), slice(self.n_dims // 2, self.n_dims)
        return slice(0, self.n_dims, 2), slice(1, self.n_dims, 2)


def to_f16(x: np.ndarray) -> np.ndarray:
    """Round to half precision (nearest-even, as F16C does) and widen back to float32."""
    return x.astype(np.float16).astype(np.float32)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to bfloat16 and widen back to float32, as ggml's GGML_FP32_TO_BF16 rounds:
    the top 16 bits, rounded to nearest with ties to even by an integer add (so values
    past the largest bf16 become infinity); a NaN keeps its top bits and is made quiet."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = np.where(nan, (bits >> 16) | 64, (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16)
    return (rounded.astype(np.uint32) << 16).view(np.float32)


def rope_cos_sin(positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's angles, (n, n_dims/2) each, as ggml's rope cache builds them."""
    rows = [_rope_row(int(p), rope) for p in positions]
    return np.stack([c for c, _ in rows]), np.stack([s for _, s in rows])   # (n, n_dims/2) each


@lru_cache(maxsize=16384)
def _rope_row(position: int, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
    """One position's cos and sin. ggml starts from theta = position, multiplies by
    powf(base, -2/n_dims) once per pair in float32, divides it by the pair's frequency
    factor (1 without one), and takes the C library's cosf and sinf, which are not always
    correctly rounded, so we call the same functions."""
    theta_scale = np.float32(np.float64(rope.freq_base) ** np.float64(np.float32(-2.0) / np.float32(rope.n_dims)))
    factors = np.ones(rope.n_dims // 2, np.float32) if rope.freq_factors is None else np.float32(rope.freq_factors)
    theta = np.float32(position)
    cos, sin = np.empty(rope.n_dims // 2, np.float32), np.empty(rope.n_dims // 2, np.float32)
    for i in range(rope.n_dims // 2):
        angle = float(np.float32(rope.freq_scale) * (theta / factors[i]))
        cos[i], sin[i] = libm.cosf(angle), libm.sinf(angle)
        theta = theta * theta_scale
    return cos, sin


class NumpyBackend:
    """The readable reference implementation of every op."""

    name = "numpy"

    def __init__(self, n_threads: int | None = None, isa: str = "avx2"):
        self.n_threads = n_threads  # NumPy decides its own threading; kept for a uniform interface
        self.isa = check_isa(isa)

    def prepare(self, weights) -> None:
        """Nothing to do: the reference reads every weight in place from the file."""

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
            raise ModelError(f"{w.name}: matrix products with {w.type.name} weights are not supported")
        xq = dot.prepare(x, repacked=True) if repacked(w, self.isa) else dot.prepare(x)
        out = np.empty((x.shape[0], w.n_out), np.float32)                  # (n, n_out)
        chunk = min(MAX_CHUNK_ROWS, max(8, CHUNK_ELEMENTS // (x.shape[0] * max(1, w.n_in // 16))))
        for r in range(0, w.n_out, chunk):
            out[:, r:r + chunk] = dot.rows(w.data[r:r + chunk], w, xq, self.isa)
        return out

    def matmuls(self, ws: tuple[Weight, ...], x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The products of one input with several weights (a compiled backend may fuse them)."""
        return tuple(self.matmul(w, x) for w in ws)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x / sqrt(mean(x^2) + eps) * weight; the squares summed left to right in double, the scale in float."""
        mean = (np.cumsum((x * x).astype(np.float64), axis=-1)[:, -1] / x.shape[-1]).astype(np.float32)  # (n,)
        scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
        return x * scale[:, None] * weight

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        """Rotate each pair (x0, x1) of each head (``Rope.pairs``) by position * theta_i."""
        cos, sin = rope_cos_sin(positions, rope)                            # (n, n_dims/2)
        cos, sin = cos[:, None, :], sin[:, None, :]                         # (n, 1, n_dims/2)
        first, second = rope.pairs()
        x0 = x[..., first].astype(np.float64)                               # (n, heads, n_dims/2)
        x1 = x[..., second].astype(np.float64)
        out = x.copy()
        # ggml's compiled rotation fuses the first product into the add: fma(x0, cos, -(x1 * sin))
        out[..., first] = x0 * cos - (x1 * sin).astype(np.float32)
        out[..., second] = x0 * sin + (x1 * cos).astype(np.float32)
        return out

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int, scale: float,
                  window: int = 0) -> np.ndarray:
        """Causal softmax(q·K^T * scale)·V over the cache, each query head reading kv head h // group;
        with a ``window``, the query at position p sees keys (p - window, p] only (llama.cpp's standard
        sliding window: key p0 is masked when p - p0 >= window).

        As in ggml's non-flash attention, q and the probabilities are rounded to f16 like
        the cache they multiply, and both products sum in ggml's order (``float_dots``);
        both run over the keys padded with zeros to a multiple of 32, as over llama.cpp's
        padded cache view.
        """
        n, n_heads, head_dim = q.shape
        n_kv_heads = k_cache.shape[0]
        group = n_heads // n_kv_heads
        n_keys = start + n
        pad = -n_keys % 32
        keys = k_cache[:, None, :n_keys].astype(np.float32)                  # (n_kv_heads, 1, n_keys, hd)
        keys = np.pad(keys, ((0, 0), (0, 0), (0, pad), (0, 0)))              # (n_kv_heads, 1, n_keys+pad, hd)
        values = v_cache[:, None, :n_keys].astype(np.float32)                # (n_kv_heads, 1, n_keys, hd)
        values = np.pad(values, ((0, 0), (0, 0), (0, pad), (0, 0)))          # (n_kv_heads, 1, n_keys+pad, hd)
        qg = to_f16(q).transpose(1, 0, 2).reshape(n_kv_heads, group, n, head_dim)  # (n_kv_heads, group, n, hd)
        scores = float_dots(qg, keys, GGMLType.F16, isa=self.isa)[..., :n_keys]  # (n_kv_heads, group, n, n_keys)
        scores = scores.reshape(n_heads, n, n_keys) * np.float32(scale)      # (n_heads, n, n_keys)
        ago = (start + np.arange(n))[:, None] - np.arange(n_keys)[None, :]  # (n, n_keys): query - key position
        scores[:, (ago < 0) | ((ago >= window) if window else False)] = -np.inf
        probs = to_f16(softmax(scores, self.isa))                            # (n_heads, n, n_keys)
        probs = np.pad(probs, ((0, 0), (0, 0), (0, pad)))                     # (n_heads, n, n_keys+pad)
        pg = probs.reshape(n_kv_heads, group, n, n_keys + pad)
        out = float_dots(pg, values.swapaxes(-1, -2), GGMLType.F16, isa=self.isa)  # (n_kv_heads, group, n, hd)
        out = out.reshape(n_heads, n, head_dim).transpose(1, 0, 2)            # (n, n_heads, hd)
        return np.ascontiguousarray(out).reshape(n, n_heads * head_dim)       # (n, n_heads*hd)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """silu(gate) * up, with silu(g) = g / (1 + exp(-g)) and ggml's vector exp."""
        return gate / (np.float32(1.0) + ggml_expf(np.float32(0.0) - gate, self.isa)) * up

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """gelu(gate) * up as ggml_vec_geglu_f32 (GGML_GELU_FP16) computes it: 0 for gate <= -10,
        gate * up for gate >= 10, else the f16 GELU table at gate rounded to f16, times up."""
        table = gelu_table().astype(np.float32)[gate.astype(np.float16).view(np.uint16)]   # (n, f)
        return np.where(gate <= -10, np.float32(0), np.where(gate >= 10, gate, table) * up)


@lru_cache(maxsize=1)
def gelu_table() -> np.ndarray:
    """ggml's ggml_table_gelu_f16: GELU (tanh form) of every f16 value, rounded to f16: (65536,) float16.

    gelu(x) = 0.5 x (1 + tanhf(sqrt(2/pi) x (1 + 0.044715 x^2))) in float32 with the C library's
    tanhf; the compiled ggml fuses 1 + (0.044715 x) x into one multiply-add.
    """
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)       # (65536,)
    with np.errstate(invalid="ignore", over="ignore"):
        inner = _fma(_GELU_COEF_A * x, x, np.float32(1.0))
        t = np.array([libm.tanhf(v) for v in (_SQRT_2_OVER_PI * x * inner).tolist()], np.float32)
        return (np.float32(0.5) * x * (np.float32(1.0) + t)).astype(np.float16)


_GELU_COEF_A = np.float32(0.044715)
_SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)


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


def hsum8(v: np.ndarray) -> np.ndarray:
    """The horizontal sum of 8 fp32 lanes (last axis) in AVX2 order: high half plus low half, then pairs."""
    quad = v[..., 4:] + v[..., :4]
    return (quad[..., 0] + quad[..., 2]) + (quad[..., 1] + quad[..., 3])


def hsum16(v: np.ndarray) -> np.ndarray:
    """The horizontal sum of 16 fp32 lanes (last axis) as GCC's _mm512_reduce_add_ps adds them:
    upper 8 lanes plus lower 8, then as ``hsum8``."""
    return hsum8(v[..., 8:] + v[..., :8])


def fma_chain(scales: np.ndarray, values: np.ndarray) -> np.ndarray:
    """acc = fma(scales[b], values[b], acc) over the leading axis, from acc = 0, in fp32."""
    acc = np.zeros(np.broadcast_shapes(scales.shape[1:], values.shape[1:]), np.float32)
    for scale, value in zip(scales, values):
        acc = _fma(scale, value, acc)
    return acc


def softmax(x: np.ndarray, isa: str = "avx2") -> np.ndarray:
    """Softmax over the last axis as ggml_vec_soft_max_f32 runs it.

    exp is ggml's own vector approximation (``ggml_expf``); each aligned group of 8
    (AVX2) or 16 (AVX-512) exponentials is summed in fp32 (``hsum8``, ``hsum16``) and the
    group sums are added in double; the row is then scaled by the fp32 reciprocal of the total.
    """
    width, hsum = (16, hsum16) if isa == "avx512" else (8, hsum8)
    e = ggml_expf(x - x.max(axis=-1, keepdims=True), isa)                  # (..., k)
    groups = np.pad(e, [(0, 0)] * (e.ndim - 1) + [(0, -e.shape[-1] % width)])
    groups = groups.reshape(*e.shape[:-1], -1, width)                       # (..., k/width, width)
    group_sums = hsum(groups)                                               # (..., k/width)
    total = np.cumsum(group_sums.astype(np.float64), axis=-1)[..., -1:]    # (..., 1), summed in order
    return e * (1.0 / total).astype(np.float32)


def ggml_expf(x: np.ndarray, isa: str = "avx2") -> np.ndarray:
    """e^x for float32 x by ggml_v_expf (vec.h): a range reduction and a degree-5 polynomial with
    fused multiply-adds; within a couple of ulps of expf but not equal.

    x = n ln2 + b; AVX2 sums the polynomial without its constant 1 and scales by 2^n in
    one fused step (k + k * j); AVX-512 adds the 1 inside the last fused step and scales
    exactly (vscalefps), so the two round differently.
    """
    x = x.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        z = _fma(x, _EXP_LOG2E, _EXP_SHIFTER)
        n = z - _EXP_SHIFTER
        b = _fma(-n, _EXP_LN2_LO, _fma(-n, _EXP_LN2_HI, x))
        u = b * b
        high = _fma(_fma(_EXP_C5, b, _EXP_C4), u, _fma(_EXP_C3, b, _EXP_C2))
        if isa == "avx512":
            j = _fma(high, u, _fma(_EXP_C1, b, np.float32(1.0)))            # 1 + p(b)
            scaled = (j.astype(np.float64) * np.exp2(np.clip(n, -200, 200).astype(np.float64))).astype(np.float32)
            return np.where(np.abs(n) > 192, np.where(n <= 0, np.float32(0), np.float32(np.inf)), scaled)
        e = z.view(np.int32) << 23
        k = (e + np.float32(1).view(np.int32)).view(np.float32)
        j = _fma(high, u, _EXP_C1 * b)
        result = _fma(k, j, k)
        large = np.abs(n) > 126
        if large.any():
            g = np.where(n <= 0, np.int32(-0x7E000000), np.int32(0))          # 0x82000000 as int32
            s1 = (g + np.int32(0x7F000000)).view(np.float32)
            s2 = (e - g).view(np.float32)
            scaled = np.where(np.abs(n) > 192, s1 * s1, _fma(s2, j, s2) * s1)
            result = np.where(large, scaled, result)
    return result


def _fma(a, b, c) -> np.ndarray:
    """Fused multiply-add in fp32: the exact product plus c, rounded once (via double)."""
    return (np.float64(1) * a * b + c).astype(np.float32)


_EXP_SHIFTER = np.float32(float.fromhex("0x1.8p23"))
_EXP_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_EXP_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_EXP_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_EXP_C1 = np.float32(float.fromhex("0x1.ffffecp-1"))
_EXP_C2 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_EXP_C3 = np.float32(float.fromhex("0x1.555e66p-3"))
_EXP_C4 = np.float32(float.fromhex("0x1.573e2ep-5"))
_EXP_C5 = np.float32(float.fromhex("0x1.0e4020p-7"))


class _FloatDot:
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
        grouped = repacked and self.vec_dot_type == GGMLType.Q8_K
        raw = self.quantize(x, repacked=True) if grouped else self.quantize(x)   # (n, row bytes)
        return quants.unpack(raw, self.vec_dot_type)

    def rows(self, data: np.ndarray, w: Weight, x, isa: str) -> np.ndarray:
        wq = quants.unpack(data, w.type)
        dxw = x.d.T[:, :, None] * wq.d.T[:, None, :]                         # (nb, n, rows)
        match wq:
            case quants.Blocks(_, q) if repacked(w, isa):
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
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q) if repacked(w, isa):
                return _k_repacked(x, q, scales, mins, dxw, x.d.T[:, :, None] * dmin.T[:, None, :])
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q) if w.type == GGMLType.Q5_K and not tiled(w, x.q.shape[0], isa):
                # vec_dot_q5_K_q8_K: 8 lanes fma'd per super-block, the mins summed apart in a scalar
                lanes = _chunk_lanes(x.q, q, scales[..., np.arange(8)[:, None].repeat(8, axis=1)])
                mins_dot = _scaled_sum(_sub_block_sums(x.bsums, 8).transpose(1, 2, 0)[..., None], mins)  # (nb, n, rows)
                neg_dmin = -(x.d.T[:, :, None] * dmin.T[:, None, :])            # (nb, n, rows)
                return hsum8(fma_chain(dxw[..., None], lanes)) + fma_chain(neg_dmin, mins_dot.astype(np.float32))
            case quants.SuperBlocksWithMin(_, dmin, scales, mins, q) if w.type == GGMLType.Q2_K and not tiled(w, x.q.shape[0], isa):
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
        and not repacked(w, isa)


def _tiled(wq, scaled_dot: np.ndarray, mins_dot: np.ndarray | None, dx: np.ndarray) -> np.ndarray:
    """The tiled kernel's float steps per super-block: r = d_w * S (minus dmin_w * M, fused), acc = fma(r, d_x, acc)."""
    r = wq.d.T[:, None, :] * scaled_dot.astype(np.float32)               # (nb, n, rows)
    if mins_dot is not None:
        r = _fma(-wq.dmin.T[:, None, :], mins_dot.astype(np.float32), r)
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


_Q8_0 = _QuantDot(GGMLType.Q8_0, quants.quantize_q8_0)
_Q8_1 = _QuantDot(GGMLType.Q8_1, quants.quantize_q8_1)
_Q8_K = _QuantDot(GGMLType.Q8_K, quants.quantize_q8_K)

# each weight type's dot product, keyed like ggml's type_traits_cpu[type].vec_dot_type
_DOTS: dict[GGMLType, object] = {
    GGMLType.F32: _FloatDot(GGMLType.F32, lambda x: x),
    GGMLType.F16: _FloatDot(GGMLType.F16, to_f16),
    GGMLType.BF16: _FloatDot(GGMLType.BF16, to_bf16),
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
MATRIX_TYPES = frozenset(_DOTS)


def repacked(w: Weight, isa: str = "avx2") -> bool:
    """Whether llama.cpp's x86 CPU backend repacks ``w``: Q4_0 and Q4_K with a multiple of 8 rows,
    and on AVX-512 Q2_K too.

    Repacked weights run other kernels (another summation order), and get their
    activations quantised four rows at a time, which for Q8_K picks the sign of the
    scale differently (see ``quants.quantize_q8_K``).
    """
    return w.n_out % 8 == 0 and w.type in _REPACKED[isa]


_REPACKED = {"avx2": (GGMLType.Q4_0, GGMLType.Q4_K), "avx512": (GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q2_K)}

