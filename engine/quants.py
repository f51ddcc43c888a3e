"""ggml's tensor types: block layouts, NumPy dequantisation, and the Q8 activation quantisers.

A quantised row is a sequence of fixed-size blocks; each block packs ``block_size``
weights into ``type_size`` bytes (small integers plus one or more scales).
"""
from enum import IntEnum


class GGMLType(IntEnum):
    """ggml's type ids, as stored in GGUF tensor infos."""
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
    BF16 = 30


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
}


def row_bytes(type_: GGMLType, n: int) -> int:
    """Bytes taken by a row of ``n`` weights; ``n`` must be a whole number of blocks."""
    block_size, type_size = BLOCK_LAYOUT[type_]
    if n % block_size:
        raise ValueError(f"a {type_.name} row of {n} weights is not a multiple of its block size {block_size}")
    return n // block_size * type_size
