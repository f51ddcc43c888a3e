"""Random weights of every type and awkward activations, for the kernel and backend tests."""
import numpy as np

from engine.ggml_math import to_bf16
from engine.quants import BLOCK_LAYOUT, GGMLType

T = GGMLType

# byte offsets of the f16 scale fields of each block type (overwritten with sane values in random blocks)
F16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}


QK_K = 256


def bf16_bits(x):
    """x rounded to bfloat16 as ggml rounds activations, as the uint16 bits a BF16 tensor stores."""
    return (to_bf16(x).view(np.uint32) >> 16).astype(np.uint16)


def random_weights(rng, type_, n_out, n_in):
    """Random bytes as blocks of ``type_`` (every bit pattern is a valid block) with finite, modest scales."""
    if type_ == T.F32:
        return rng.standard_normal((n_out, n_in)).astype(np.float32)
    if type_ == T.F16:
        return rng.standard_normal((n_out, n_in)).astype(np.float16)
    if type_ == T.BF16:
        return bf16_bits(rng.standard_normal((n_out, n_in)))
    block, size = BLOCK_LAYOUT[type_]
    blocks = rng.integers(0, 256, (n_out, n_in // block, size), dtype=np.uint8)
    for off in F16_FIELDS[type_]:
        blocks[..., off:off + 2] = (rng.uniform(0.001, 0.02, blocks.shape[:2]).astype(np.float16)
                                    .view(np.uint8).reshape(*blocks.shape[:2], 2))
    return blocks.reshape(n_out, -1)


def activations(rng, n, k):
    """Random rows with the awkward cases: an all-zero block, +amax and -amax in one block, exact halves."""
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[0, :QK_K] = 0.0
    if n > 1:
        x[1, 3], x[1, 9] = -4.0, 4.0
        x[1, 40:64] = np.float32(127 / 254) * x[1, 40:64].max()
    return x


PRODUCT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
