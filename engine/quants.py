"""ggml's tensor types: block layouts, NumPy dequantisation, and the Q8 activation quantisers.

A quantised row is a sequence of fixed-size blocks; each block packs ``block_size``
weights into ``type_size`` bytes (small integers plus one or more scales).

Everything here works on whole arrays of rows at once: ``raw`` is uint8 of shape
``(..., bytes_per_row)`` as ``GGUFFile.tensor`` returns it, and results keep the
leading axes.

Unpacking
---------
``unpack(raw, type_)`` splits each block into the integers and scales that ggml's
integer dot products work with, without any float arithmetic beyond widening f16
scales to f32.  The result is one of these NamedTuples (``nb`` = blocks per row):

=====================  =====================================  ======================================
type                   tuple and fields                       value of weight ``i`` of a block
=====================  =====================================  ======================================
Q4_0, Q5_0, Q8_0       ``Blocks(d, q)``                       ``d * q[i]``
Q4_1, Q5_1             ``BlocksWithMin(d, m, q)``             ``d * q[i] + m``
Q8_1                   ``Q8_1Blocks(d, s, q)``                ``d * q[i]``; ``s`` = f16(d * sum(q))
Q3_K, Q6_K             ``SuperBlocks(d, scales, q)``          ``(d * scales[i // 16]) * q[i]``
Q2_K, Q4_K, Q5_K       ``SuperBlocksWithMin(d, dmin,          ``(d * scales[j]) * q[i] - (dmin * mins[j])``
                       scales, mins, q)``                     with ``j = i // (256 // n_sub)``
Q8_K                   ``Q8_KBlocks(d, q, bsums)``            ``d * q[i]``; ``bsums`` = sums of 16 q
=====================  =====================================  ======================================

Shapes and ranges: ``d``, ``m``, ``s``, ``dmin`` are float32 ``(..., nb)``; ``q`` is int8
``(..., nb, block_size)`` in the weights' own order, already shifted to the range the
dot product multiplies (Q4_0 -8..7, Q5_0 -16..15, Q8_0/Q8_1/Q8_K -128..127, Q4_1 0..15,
Q5_1 0..31, Q2_K 0..3, Q3_K -4..3, Q4_K 0..15, Q5_K 0..31, Q6_K -32..31); ``scales``
and ``mins`` are int8 ``(..., nb, n_sub)`` with ``n_sub`` = 16 sub-blocks of 16 for
Q2_K (scales and mins 0..15), Q3_K (scales -32..31) and Q6_K (scales -128..127), and
8 sub-blocks of 32 for Q4_K and Q5_K (scales and mins 0..63); ``bsums`` is int16
``(..., nb, 16)``.  Fields may be read-only views of ``raw``.

Dequantisation multiplies these out in exactly the float32 operation order of ggml's
``dequantize_row_*`` (ggml-quants.c, built without FMA contraction), so results are
bit-identical to ggml and to ``gguf.quants.dequantize``.

Activation quantisers
---------------------
Before a quantised matrix product ggml quantises the f32 activations to the weight
type's ``vec_dot_type`` (ggml-cpu.c type traits): Q8_0 for Q4_0, Q5_0 and Q8_0; Q8_1
for Q4_1 and Q5_1; Q8_K for every K-quant.  ``quantize_q8_0``, ``quantize_q8_1`` and
``quantize_q8_K`` reproduce what the x86 CPU backend runs (see their docstrings for
the rounding rules, which differ from ggml's scalar reference code).
"""
from enum import IntEnum
from typing import NamedTuple

import numpy as np


class GGMLType(IntEnum):
    """ggml's type ids, as stored in GGUF tensor infos (ggml.h; the gaps are types ggml retired)."""
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41
    Q2_0 = 42


QK = 32    # weights per block of the classic quants
QK_K = 256  # weights per super-block of the K-quants

# (weights per block, bytes per block)
BLOCK_LAYOUT: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (QK, 2 + QK // 2),                       # d, 4-bit quants
    GGMLType.Q4_1: (QK, 4 + QK // 2),                       # d, m, 4-bit quants
    GGMLType.Q5_0: (QK, 2 + 4 + QK // 2),                   # d, high bits, low nibbles
    GGMLType.Q5_1: (QK, 4 + 4 + QK // 2),                   # d, m, high bits, low nibbles
    GGMLType.Q8_0: (QK, 2 + QK),                            # d, int8 quants
    GGMLType.Q8_1: (QK, 4 + QK),                            # d, d*sum, int8 quants
    GGMLType.Q2_K: (QK_K, QK_K // 16 + QK_K // 4 + 4),      # scales, 2-bit quants, d, dmin
    GGMLType.Q3_K: (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),  # high-bit mask, 2-bit quants, scales, d
    GGMLType.Q4_K: (QK_K, 4 + 12 + QK_K // 2),              # d, dmin, 6-bit scales, 4-bit quants
    GGMLType.Q5_K: (QK_K, 4 + 12 + QK_K // 8 + QK_K // 2),  # d, dmin, scales, high bits, low nibbles
    GGMLType.Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),  # low 4, high 2, scales, d
    GGMLType.Q8_K: (QK_K, 4 + QK_K + QK_K // 16 * 2),       # f32 d, int8 quants, block sums
    # types a file may hold but the engine does not compute with (model.py rejects them at load)
    GGMLType.IQ2_XXS: (QK_K, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (QK_K, 2 + 3 * QK_K // 8),
    GGMLType.IQ1_S: (QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (QK, 2 + QK // 2),
    GGMLType.IQ3_S: (QK_K, 2 + 13 * QK_K // 32 + QK_K // 64),
    GGMLType.IQ2_S: (QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (QK_K, 4 + QK_K // 64 + QK_K // 2),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.TQ1_0: (QK_K, 2 + QK_K // 64 + (QK_K - 4 * QK_K // 64) // 5),
    GGMLType.TQ2_0: (QK_K, 2 + QK_K // 4),
    GGMLType.MXFP4: (QK, 1 + QK // 2),
    GGMLType.NVFP4: (64, 4 + 32),
    GGMLType.Q1_0: (128, 2 + 128 // 8),
    GGMLType.Q2_0: (64, 2 + 64 // 4),
}

FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)

# the activation type each weight type's integer dot product pairs with (ggml-cpu.c)
VEC_DOT_TYPE: dict[GGMLType, GGMLType] = {
    GGMLType.Q4_0: GGMLType.Q8_0,
    GGMLType.Q4_1: GGMLType.Q8_1,
    GGMLType.Q5_0: GGMLType.Q8_0,
    GGMLType.Q5_1: GGMLType.Q8_1,
    GGMLType.Q8_0: GGMLType.Q8_0,
    GGMLType.Q2_K: GGMLType.Q8_K,
    GGMLType.Q3_K: GGMLType.Q8_K,
    GGMLType.Q4_K: GGMLType.Q8_K,
    GGMLType.Q5_K: GGMLType.Q8_K,
    GGMLType.Q6_K: GGMLType.Q8_K,
}


def row_bytes(type_: GGMLType, n: int) -> int:
    """Bytes taken by a row of ``n`` weights; ``n`` must be a whole number of blocks."""
    block_size, type_size = BLOCK_LAYOUT[type_]
    if n % block_size:
        raise ValueError(f"a {type_.name} row of {n} weights is not a multiple of its block size {block_size}")
    return n // block_size * type_size


# ---------------------------------------------------------------- unpacked blocks

class Blocks(NamedTuple):
    """Q4_0, Q5_0, Q8_0: weight = d * q."""
    d: np.ndarray  # (..., nb) float32
    q: np.ndarray  # (..., nb, 32) int8


class BlocksWithMin(NamedTuple):
    """Q4_1, Q5_1: weight = d * q + m."""
    d: np.ndarray  # (..., nb) float32
    m: np.ndarray  # (..., nb) float32
    q: np.ndarray  # (..., nb, 32) int8, unsigned range


class Q8_1Blocks(NamedTuple):
    """Q8_1 activations: value = d * q, with s = d * sum(q) rounded to f16."""
    d: np.ndarray  # (..., nb) float32
    s: np.ndarray  # (..., nb) float32
    q: np.ndarray  # (..., nb, 32) int8


class SuperBlocks(NamedTuple):
    """Q3_K, Q6_K: weight = (d * scales[sub-block]) * q."""
    d: np.ndarray       # (..., nb) float32
    scales: np.ndarray  # (..., nb, 16) int8
    q: np.ndarray       # (..., nb, 256) int8


class SuperBlocksWithMin(NamedTuple):
    """Q2_K, Q4_K, Q5_K: weight = (d * scales[sub-block]) * q - dmin * mins[sub-block]."""
    d: np.ndarray       # (..., nb) float32
    dmin: np.ndarray    # (..., nb) float32
    scales: np.ndarray  # (..., nb, n_sub) int8
    mins: np.ndarray    # (..., nb, n_sub) int8
    q: np.ndarray       # (..., nb, 256) int8, unsigned range


class Q8_KBlocks(NamedTuple):
    """Q8_K activations: value = d * q, with the sum of every 16 consecutive q."""
    d: np.ndarray      # (..., nb) float32
    q: np.ndarray      # (..., nb, 256) int8
    bsums: np.ndarray  # (..., nb, 16) int16


Unpacked = Blocks | BlocksWithMin | Q8_1Blocks | SuperBlocks | SuperBlocksWithMin | Q8_KBlocks


# ---------------------------------------------------------------- byte access

def _blocks(raw: np.ndarray, type_: GGMLType) -> np.ndarray:
    """View rows of raw bytes as (..., n_blocks, type_size), checking dtype and length."""
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise TypeError(f"{type_.name} data must be a uint8 array, got {getattr(raw, 'dtype', type(raw).__name__)}")
    if raw.ndim == 0:
        raise ValueError(f"{type_.name} data must have at least one axis of bytes")
    _, type_size = BLOCK_LAYOUT[type_]
    if raw.shape[-1] % type_size:
        raise ValueError(f"a {type_.name} row of {raw.shape[-1]} bytes is not a whole number of "
                         f"{type_size}-byte blocks")
    return raw.reshape(*raw.shape[:-1], raw.shape[-1] // type_size, type_size)


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f16 field at ``offset`` of every block, widened to f32: (..., nb)."""
    return np.ascontiguousarray(blocks[..., offset:offset + 2]).view(np.float16)[..., 0].astype(np.float32)


def _f32(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f32 field at ``offset`` of every block: (..., nb)."""
    return np.ascontiguousarray(blocks[..., offset:offset + 4]).view(np.float32)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Split (..., k) packed bytes into (..., 2, k): low nibbles first, then high nibbles."""
    return np.stack([qs & 0x0F, qs >> 4], axis=-2)


def _bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Bit ``i`` of a little-endian bit field of (..., n_bits // 8) bytes: (..., n_bits) in 0/1."""
    return np.unpackbits(packed, axis=-1, count=n_bits, bitorder="little")


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """2-bit fields of (..., 32) bytes as (..., 4, 32): field j of every byte is (byte >> 2j) & 3."""
    shifts = np.arange(0, 8, 2, dtype=np.uint8)[:, None]  # (4, 1)
    return (qs[..., None, :] >> shifts) & 3


# ---------------------------------------------------------------- per-type unpacking

def unpack_q4_0(raw: np.ndarray) -> Blocks:
    """Q4_0 block: f16 d, then 16 bytes whose low nibbles are weights 0..15 and high nibbles 16..31."""
    b = _blocks(raw, GGMLType.Q4_0)
    q = _nibbles(b[..., 2:18]).reshape(*b.shape[:-1], QK)  # (..., nb, 32)
    return Blocks(_f16(b, 0), q.astype(np.int8) - 8)


def unpack_q4_1(raw: np.ndarray) -> BlocksWithMin:
    """Q4_1 block: f16 d, f16 m, then the nibbles as in Q4_0 (unsigned)."""
    b = _blocks(raw, GGMLType.Q4_1)
    q = _nibbles(b[..., 4:20]).reshape(*b.shape[:-1], QK)  # (..., nb, 32)
    return BlocksWithMin(_f16(b, 0), _f16(b, 2), q.astype(np.int8))


def _five_bit(b: np.ndarray, qh_at: int) -> np.ndarray:
    """Q5_0/Q5_1 quants 0..31: nibbles as in Q4_0 plus bit i of the 32-bit qh as bit 4 of weight i."""
    low = _nibbles(b[..., qh_at + 4:qh_at + 20]).reshape(*b.shape[:-1], QK)  # (..., nb, 32)
    high = _bits(b[..., qh_at:qh_at + 4], QK)                                # (..., nb, 32)
    return (low | (high << 4)).astype(np.int8)


def unpack_q5_0(raw: np.ndarray) -> Blocks:
    """Q5_0 block: f16 d, 32 high bits, 16 bytes of nibbles; q is offset to -16..15."""
    b = _blocks(raw, GGMLType.Q5_0)
    return Blocks(_f16(b, 0), _five_bit(b, 2) - 16)


def unpack_q5_1(raw: np.ndarray) -> BlocksWithMin:
    """Q5_1 block: f16 d, f16 m, 32 high bits, 16 bytes of nibbles (unsigned)."""
    b = _blocks(raw, GGMLType.Q5_1)
    return BlocksWithMin(_f16(b, 0), _f16(b, 2), _five_bit(b, 4))


def unpack_q8_0(raw: np.ndarray) -> Blocks:
    """Q8_0 block: f16 d, then 32 int8 quants."""
    b = _blocks(raw, GGMLType.Q8_0)
    return Blocks(_f16(b, 0), b[..., 2:].view(np.int8))


def unpack_q8_1(raw: np.ndarray) -> Q8_1Blocks:
    """Q8_1 block: f16 d, f16 s (= d * sum of the quants), then 32 int8 quants."""
    b = _blocks(raw, GGMLType.Q8_1)
    return Q8_1Blocks(_f16(b, 0), _f16(b, 2), b[..., 4:].view(np.int8))


def unpack_q2_K(raw: np.ndarray) -> SuperBlocksWithMin:
    """Q2_K super-block: 16 bytes of (min << 4 | scale), 64 bytes of 2-bit quants, f16 d, f16 dmin.

    Weights 128h + 32j + i (i < 32) are bits 2j..2j+1 of quant byte 32h + i.
    """
    b = _blocks(raw, GGMLType.Q2_K)
    packed_scales = b[..., :16]
    q = _crumbs(b[..., 16:80].reshape(*b.shape[:-1], 2, 32))  # (..., nb, 2, 4, 32)
    q = q.reshape(*b.shape[:-1], QK_K)                         # (..., nb, 256)
    return SuperBlocksWithMin(_f16(b, 80), _f16(b, 82), (packed_scales & 0x0F).view(np.int8),
                              (packed_scales >> 4).view(np.int8), q.view(np.int8))


def _q3_K_scales(packed: np.ndarray) -> np.ndarray:
    """Q3_K's sixteen 6-bit scales from 12 bytes, offset to -32..31: (..., 16) int8.

    Scale i takes its low 4 bits from nibble i // 8 of byte i % 8 and its high 2 bits
    from bits 2(i // 4).. of byte 8 + i % 4.
    """
    i = np.arange(16)
    low = (packed[..., i % 8] >> (4 * (i // 8)).astype(np.uint8)) & 0x0F
    high = (packed[..., 8 + i % 4] >> (2 * (i // 4)).astype(np.uint8)) & 3
    return (low | (high << 4)).astype(np.int8) - 32


def unpack_q3_K(raw: np.ndarray) -> SuperBlocks:
    """Q3_K super-block: 32 bytes of high bits, 64 bytes of 2-bit quants, 12 bytes of scales, f16 d.

    Weight 128h + 32j + i has its low 2 bits as in Q2_K; bit 4h + j of high-mask byte i
    set means q = low, clear means q = low - 4.
    """
    b = _blocks(raw, GGMLType.Q3_K)
    low = _crumbs(b[..., 32:96].reshape(*b.shape[:-1], 2, 32))      # (..., nb, 2, 4, 32)
    high = _bits(b[..., :32, None], 8)                                 # (..., nb, 32, 8)
    high = np.swapaxes(high, -1, -2).reshape(*b.shape[:-1], 2, 4, 32)  # (..., nb, 2, 4, 32)
    q = low.astype(np.int8) - 4 * (1 - high.astype(np.int8))
    return SuperBlocks(_f16(b, 108), _q3_K_scales(b[..., 96:108]), q.reshape(*b.shape[:-1], QK_K))


def _k4_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins packed into 12 bytes by Q4_K and Q5_K: 2 x (..., 8) int8.

    Sub-blocks 0..3 use the low 6 bits of bytes 0..3 (scale) and 4..7 (min); sub-blocks
    4..7 use a nibble of bytes 8..11 plus the top 2 bits of bytes 0..3 (scale) or 4..7 (min).
    """
    first, second, third = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([first & 63, (third & 0x0F) | ((first >> 6) << 4)], axis=-1)
    mins = np.concatenate([second & 63, (third >> 4) | ((second >> 6) << 4)], axis=-1)
    return scales.view(np.int8), mins.view(np.int8)


def unpack_q4_K(raw: np.ndarray) -> SuperBlocksWithMin:
    """Q4_K super-block: f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles.

    Weights 64c..64c+31 are the low nibbles of bytes 32c..32c+31, the next 32 their high nibbles.
    """
    b = _blocks(raw, GGMLType.Q4_K)
    q = _nibbles(b[..., 16:].reshape(*b.shape[:-1], 4, 32))  # (..., nb, 4, 2, 32)
    return SuperBlocksWithMin(_f16(b, 0), _f16(b, 2), *_k4_scales_mins(b[..., 4:16]),
                              q.reshape(*b.shape[:-1], QK_K).view(np.int8))


def unpack_q5_K(raw: np.ndarray) -> SuperBlocksWithMin:
    """Q5_K super-block: f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes of high bits, 128 of nibbles.

    Nibbles as in Q4_K; bit s of high-bit byte i is bit 4 of weight 32s + i.
    """
    b = _blocks(raw, GGMLType.Q5_K)
    low = _nibbles(b[..., 48:].reshape(*b.shape[:-1], 4, 32))  # (..., nb, 4, 2, 32)
    high = np.swapaxes(_bits(b[..., 16:48, None], 8), -1, -2)   # (..., nb, 8, 32)
    q = low.reshape(*b.shape[:-1], 8, 32) | (high << 4)
    return SuperBlocksWithMin(_f16(b, 0), _f16(b, 2), *_k4_scales_mins(b[..., 4:16]),
                              q.reshape(*b.shape[:-1], QK_K).view(np.int8))


def unpack_q6_K(raw: np.ndarray) -> SuperBlocks:
    """Q6_K super-block: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, f16 d.

    Weight 128h + 32k + i: low 4 bits are nibble k // 2 of byte 64h + 32(k % 2) + i, high
    2 bits are bits 2k..2k+1 of byte 32h + i; q is offset to -32..31.
    """
    b = _blocks(raw, GGMLType.Q6_K)
    low = _nibbles(b[..., :128].reshape(*b.shape[:-1], 2, 2, 32))  # (..., nb, 2, 2 [k%2], 2 [k//2], 32)
    low = np.swapaxes(low, -2, -3)                                  # (..., nb, 2, 2 [k//2], 2 [k%2], 32)
    high = _crumbs(b[..., 128:192].reshape(*b.shape[:-1], 2, 32))   # (..., nb, 2, 4, 32)
    q = low.reshape(*b.shape[:-1], 2, 4, 32) | (high << 4)
    return SuperBlocks(_f16(b, 208), b[..., 192:208].view(np.int8),
                       q.reshape(*b.shape[:-1], QK_K).astype(np.int8) - 32)


def unpack_q8_K(raw: np.ndarray) -> Q8_KBlocks:
    """Q8_K block: f32 d, 256 int8 quants, 16 int16 sums of 16 quants each."""
    b = _blocks(raw, GGMLType.Q8_K)
    bsums = np.ascontiguousarray(b[..., 4 + QK_K:]).view(np.int16)
    return Q8_KBlocks(_f32(b, 0), b[..., 4:4 + QK_K].view(np.int8), bsums)


_UNPACK = {
    GGMLType.Q4_0: unpack_q4_0,
    GGMLType.Q4_1: unpack_q4_1,
    GGMLType.Q5_0: unpack_q5_0,
    GGMLType.Q5_1: unpack_q5_1,
    GGMLType.Q8_0: unpack_q8_0,
    GGMLType.Q8_1: unpack_q8_1,
    GGMLType.Q2_K: unpack_q2_K,
    GGMLType.Q3_K: unpack_q3_K,
    GGMLType.Q4_K: unpack_q4_K,
    GGMLType.Q5_K: unpack_q5_K,
    GGMLType.Q6_K: unpack_q6_K,
    GGMLType.Q8_K: unpack_q8_K,
}


def unpack(raw: np.ndarray, type_: GGMLType) -> Unpacked:
    """Integer quants and scales of every block of uint8 rows (..., bytes_per_row); see the module docstring."""
    if type_ not in _UNPACK:
        raise ValueError(f"{GGMLType(type_).name} is not a block type that llamanp unpacks")
    return _UNPACK[type_](raw)


# ---------------------------------------------------------------- dequantisation

def _expand(per_sub: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Repeat per-sub-block values (..., nb, n_sub) over the weights of each sub-block: (..., nb, 256)."""
    return np.repeat(per_sub, q.shape[-1] // per_sub.shape[-1], axis=-1)


def _multiply_out(blocks: Unpacked) -> np.ndarray:
    """Float32 weights (..., nb, block_size) in ggml's dequantize_row_* operation order."""
    match blocks:
        case Blocks(d, q) | Q8_1Blocks(d, _, q) | Q8_KBlocks(d, q, _):
            return q * d[..., None]
        case BlocksWithMin(d, m, q):
            return q * d[..., None] + m[..., None]
        case SuperBlocks(d, scales, q):
            return _expand(d[..., None] * scales, q) * q
        case SuperBlocksWithMin(d, dmin, scales, mins, q):
            return _expand(d[..., None] * scales, q) * q - _expand(dmin[..., None] * mins, q)


def _float_row(raw: np.ndarray, type_: GGMLType) -> np.ndarray:
    """F32, F16 and BF16 rows, typed or as raw bytes, widened to float32."""
    storage = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.BF16: np.uint16}[type_]
    if raw.dtype == np.uint8:
        if raw.ndim == 0 or raw.shape[-1] % np.dtype(storage).itemsize:
            raise ValueError(f"a {type_.name} row of {raw.size if raw.ndim == 0 else raw.shape[-1]} bytes "
                             f"is not a whole number of {np.dtype(storage).itemsize}-byte values")
        raw = np.ascontiguousarray(raw).view(storage)
    elif raw.dtype != storage:
        raise TypeError(f"{type_.name} data must be {np.dtype(storage).name} or uint8, got {raw.dtype}")
    if type_ == GGMLType.BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def dequantize(raw: np.ndarray, type_: GGMLType, n: int | None = None) -> np.ndarray:
    """Float32 weights (..., n) of rows stored as ``type_``, bit-exact with ggml's dequantize_row_*.

    ``raw`` is uint8 (..., bytes_per_row), or for the float types also the typed array
    that ``GGUFFile.tensor`` returns.  ``n``, when given, is the expected row length in
    weights and is checked against the data.
    """
    type_ = GGMLType(type_)
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"{type_.name} data must be a NumPy array, got {type(raw).__name__}")
    if type_ in FLOAT_TYPES:
        weights = _float_row(raw, type_)
    else:
        blocks = unpack(raw, type_)
        weights = _multiply_out(blocks).reshape(*raw.shape[:-1], -1)  # (..., n)
    if n is not None and weights.shape[-1] != n:
        raise ValueError(f"{type_.name} data holds rows of {weights.shape[-1]} weights, expected {n}")
    return weights


# ---------------------------------------------------------------- activation quantisers

def _activation_blocks(x: np.ndarray, block_size: int, name: str) -> np.ndarray:
    """f32 activations (..., n) as (..., n // block_size, block_size)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise ValueError(f"{name} quantises rows whose length is a multiple of {block_size}, got shape {x.shape}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)


def _join(*fields: np.ndarray) -> np.ndarray:
    """Serialise per-block fields (..., nb, k_i) into raw rows (..., nb * sum of their byte sizes)."""
    parts = [np.ascontiguousarray(f).view(np.uint8) for f in fields]
    joined = np.concatenate(parts, axis=-1)  # (..., nb, type_size)
    return joined.reshape(*joined.shape[:-2], -1)


def _q8_scale(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AVX2 Q8_0/Q8_1 block scaling: d = amax / 127, q = round-half-even(x * (127 / amax))."""
    amax = np.abs(blocks).max(axis=-1, keepdims=True)  # (..., nb, 1)
    d = amax / np.float32(127)
    inverse = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax != 0)
    q = np.rint(blocks * inverse).astype(np.int32)
    return d, q, amax


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Quantise f32 activations (..., n) to Q8_0 rows (..., n // 32 * 34) as ggml's AVX2 backend does.

    Mirrors quantize_row_q8_0 in ggml-cpu/arch/x86/quants.c: d = amax / 127 stored as f16
    (round to nearest even), multiplier 127 / amax (not 1 / d), and _mm256_round_ps
    rounding to nearest with ties to even.  ggml's scalar reference (and
    gguf.quants.quantize) instead multiplies by 1 / d and rounds ties away from zero.
    The repacked Q4_0 path (repack.cpp, ggml_quantize_mat_q8_0_4x8 on AVX2) computes
    exactly the same numbers, only interleaved, so this serves both paths.
    """
    blocks = _activation_blocks(x, QK, "Q8_0")
    d, q, _ = _q8_scale(blocks)
    with np.errstate(over="ignore"):  # like ggml, an f16 scale past 65504 becomes inf
        return _join(d.astype(np.float16), q.astype(np.int8))


def quantize_q8_1(x: np.ndarray) -> np.ndarray:
    """Quantise f32 activations (..., n) to Q8_1 rows (..., n // 32 * 36) as ggml's AVX2 backend does.

    Same quants and d as ``quantize_q8_0``; s = f16(d * sum(q)) with the f32 d before
    its rounding to f16 (quantize_row_q8_1 in ggml-cpu/arch/x86/quants.c).
    """
    blocks = _activation_blocks(x, QK, "Q8_1")
    d, q, _ = _q8_scale(blocks)
    s = d * q.sum(axis=-1, keepdims=True).astype(np.float32)
    with np.errstate(over="ignore"):  # like ggml, an f16 scale past 65504 becomes inf
        return _join(d.astype(np.float16), s.astype(np.float16), q.astype(np.int8))


def _q8_K_row_iscale(blocks: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K's inverse scale -127 / max, max being the first value of largest magnitude."""
    first = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
    return np.divide(np.float32(-127), first, out=np.zeros_like(amax), where=amax != 0)


def _q8_K_group_iscale(blocks: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """ggml_quantize_mat_q8_K_4x8's inverse scale: -127 / amax if +amax occurs in the block, else 127 / amax."""
    positive_max = (blocks == amax).any(axis=-1, keepdims=True)
    signed = np.where(positive_max, np.float32(-127), np.float32(127))
    return np.divide(signed, amax, out=np.zeros_like(amax), where=amax != 0)


def quantize_q8_K(x: np.ndarray, grouped: bool = False) -> np.ndarray:
    """Quantise f32 activations (..., n) to Q8_K rows (..., n // 256 * 292) as ggml's x86 backend does.

    On x86 quantize_row_q8_K is ggml's scalar quantize_row_q8_K_ref: iscale = -127 / max
    with max the first value of largest magnitude (so that value becomes -127), q =
    min(127, nearest_int(iscale * x)) where nearest_int rounds ties to even, d = 1 / iscale
    (f32), bsums the int16 sums of each 16 quants; an all-zero block stores d = 0.

    ``grouped=True`` mirrors a matrix product against weights that llama.cpp repacked
    (Q4_K, and Q2_K in an AVX-512 build, when the weight has a multiple of 8 rows): there the activation rows
    along axis -2 are quantised four at a time by ggml_quantize_mat_q8_K_4x8
    (ggml-cpu/arch/x86/repack.cpp), and only the ``rows % 4`` trailing rows go through
    quantize_row_q8_K.  The grouped code rounds the same way (_mm256_round_ps, ties to
    even) but picks the sign of iscale differently: -127 / amax whenever +amax occurs in
    the block, else +127 / amax.  The two differ only when a block holds both +amax and
    -amax with -amax first.
    """
    blocks = _activation_blocks(x, QK_K, "Q8_K")
    amax = np.abs(blocks).max(axis=-1, keepdims=True)  # (..., nb, 1)
    iscale = _q8_K_row_iscale(blocks, amax)
    if grouped and blocks.ndim >= 3:
        grouped_rows = blocks.shape[-3] - blocks.shape[-3] % 4
        iscale[..., :grouped_rows, :, :] = _q8_K_group_iscale(blocks, amax)[..., :grouped_rows, :, :]
    q = np.minimum(np.rint(iscale * blocks), 127).astype(np.int8)
    d = np.divide(np.float32(1), iscale, out=np.zeros_like(iscale), where=iscale != 0)
    bsums = q.reshape(*q.shape[:-1], QK_K // 16, 16).sum(axis=-1, dtype=np.int16)  # (..., nb, 16)
    return _join(d, q, bsums)
