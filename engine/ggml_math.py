"""ggml's scalar and lane arithmetic, as its AVX2 or AVX-512 CPU kernels compute it (``isa``,
see ``engine.isa``), in NumPy.

The building blocks of the exact backend (``engine.exact``): rounding to f16 and bf16, the
fp32 fused multiply-add, the 8- and 16-lane horizontal sums, ggml's vector exp and the softmax built
on it, the f16 GELU table, and RoPE's cos/sin cache with the C library's cosf/sinf.  Each
has a C twin of the same name in ``kernels/`` (see docs/architecture.md's op table).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import libm
from .operands import Rope


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
        z = fma_f32(x, _EXP_LOG2E, _EXP_SHIFTER)
        n = z - _EXP_SHIFTER
        b = fma_f32(-n, _EXP_LN2_LO, fma_f32(-n, _EXP_LN2_HI, x))
        u = b * b
        high = fma_f32(fma_f32(_EXP_C5, b, _EXP_C4), u, fma_f32(_EXP_C3, b, _EXP_C2))
        if isa == "avx512":
            j = fma_f32(high, u, fma_f32(_EXP_C1, b, np.float32(1.0)))            # 1 + p(b)
            scaled = (j.astype(np.float64) * np.exp2(np.clip(n, -200, 200).astype(np.float64))).astype(np.float32)
            return np.where(np.abs(n) > 192, np.where(n <= 0, np.float32(0), np.float32(np.inf)), scaled)
        e = z.view(np.int32) << 23
        k = (e + np.float32(1).view(np.int32)).view(np.float32)
        j = fma_f32(high, u, _EXP_C1 * b)
        result = fma_f32(k, j, k)
        large = np.abs(n) > 126
        if large.any():
            g = np.where(n <= 0, np.int32(-0x7E000000), np.int32(0))          # 0x82000000 as int32
            s1 = (g + np.int32(0x7F000000)).view(np.float32)
            s2 = (e - g).view(np.float32)
            scaled = np.where(np.abs(n) > 192, s1 * s1, fma_f32(s2, j, s2) * s1)
            result = np.where(large, scaled, result)
    return result


def fma_f32(a, b, c) -> np.ndarray:
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


def hsum8(v: np.ndarray) -> np.ndarray:
    """The horizontal sum of 8 fp32 lanes (last axis) in AVX2 order: high half plus low half, then pairs."""
    quad = v[..., 4:] + v[..., :4]
    return (quad[..., 0] + quad[..., 2]) + (quad[..., 1] + quad[..., 3])


def hsum16(v: np.ndarray) -> np.ndarray:
    """The horizontal sum of 16 fp32 lanes (last axis) as GCC's _mm512_reduce_add_ps adds them:
    upper 8 lanes plus lower 8, then as ``hsum8``."""
    return hsum8(v[..., 8:] + v[..., :8])



@lru_cache(maxsize=1)
def gelu_table() -> np.ndarray:
    """ggml's ggml_table_gelu_f16: GELU (tanh form) of every f16 value, rounded to f16: (65536,) float16.

    gelu(x) = 0.5 x (1 + tanhf(sqrt(2/pi) x (1 + 0.044715 x^2))) in float32 with the C library's
    tanhf; the compiled ggml fuses 1 + (0.044715 x) x into one multiply-add.
    """
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)       # (65536,)
    with np.errstate(invalid="ignore", over="ignore"):
        inner = fma_f32(_GELU_COEF_A * x, x, np.float32(1.0))
        t = np.array([libm.tanhf(v) for v in (_SQRT_2_OVER_PI * x * inner).tolist()], np.float32)
        return (np.float32(0.5) * x * (np.float32(1.0) + t)).astype(np.float16)


_GELU_COEF_A = np.float32(0.044715)
_SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)



def rope_cos_sin(positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's angles, (n, n_dims/2) each, as ggml's rope cache builds them."""
    rows = [_rope_cos_sin_at(int(p), rope) for p in positions]
    return np.stack([c for c, _ in rows]), np.stack([s for _, s in rows])   # (n, n_dims/2) each


@lru_cache(maxsize=16384)
def _rope_cos_sin_at(position: int, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
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
