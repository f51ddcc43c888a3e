"""Dequantisation, unpacking and the Q8 activation quantisers, checked bit for bit against
ggml itself (llama-cpp-python's libggml via ctypes) and the gguf package."""
import gguf
import numpy as np
import pytest
from gguf import quants as gguf_quants
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests import ggml_ref
from tests.model_files import PURE_K_TYPES
from engine.gguf import read_gguf
from engine.quants import (BLOCK_LAYOUT, QK, QK_K, Blocks, BlocksWithMin, GGMLType, Q8_1Blocks, Q8_KBlocks,
                           SuperBlocks, SuperBlocksWithMin, dequantize, quantize_q8_0, quantize_q8_1,
                           quantize_q8_K, unpack)

T = GGMLType
QUANTISED = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
ACTIVATIONS = {T.Q8_0: quantize_q8_0, T.Q8_1: quantize_q8_1, T.Q8_K: quantize_q8_K}

# byte offsets of the f16 scale fields inside one block (block_q* structs in ggml-common.h)
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

# what unpack promises (module docstring): tuple type, q range, scales range, mins range
CONTRACT = {
    T.Q4_0: (Blocks, (-8, 7), None, None),
    T.Q5_0: (Blocks, (-16, 15), None, None),
    T.Q8_0: (Blocks, (-128, 127), None, None),
    T.Q4_1: (BlocksWithMin, (0, 15), None, None),
    T.Q5_1: (BlocksWithMin, (0, 31), None, None),
    T.Q2_K: (SuperBlocksWithMin, (0, 3), (0, 15), (0, 15)),
    T.Q3_K: (SuperBlocks, (-4, 3), (-32, 31), None),
    T.Q4_K: (SuperBlocksWithMin, (0, 15), (0, 63), (0, 63)),
    T.Q5_K: (SuperBlocksWithMin, (0, 31), (0, 63), (0, 63)),
    T.Q6_K: (SuperBlocks, (-32, 31), (-128, 127), None),
}


def random_rows(type_: GGMLType, rng: np.random.Generator, n_rows: int = 4, n_blocks: int = 16) -> np.ndarray:
    """Random bytes in type_'s block layout whose f16 scales are finite, of either sign, 1e-6..10."""
    _, type_size = BLOCK_LAYOUT[type_]
    raw = rng.integers(0, 256, (n_rows, n_blocks, type_size), dtype=np.uint8)
    for at in F16_FIELDS[type_]:
        scale = rng.choice([-1, 1], (n_rows, n_blocks, 1)) * 10 ** rng.uniform(-6, 1, (n_rows, n_blocks, 1))
        raw[..., at:at + 2] = scale.astype(np.float16).view(np.uint8)
    return raw.reshape(n_rows, -1)


def gguf_dequantize(raw: np.ndarray, type_: GGMLType) -> np.ndarray:
    return gguf_quants.dequantize(raw, gguf.GGMLQuantizationType(int(type_)))


def ggml_dequantize(raw: np.ndarray, type_: GGMLType) -> np.ndarray:
    return np.stack([ggml_ref.dequantize_row(row, type_) for row in raw.reshape(-1, raw.shape[-1])])


def assert_same_bits(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32).reshape(ours.shape))


# ---------------------------------------------------------------- dequantisation

@pytest.mark.parametrize("type_", QUANTISED, ids=lambda t: t.name)
def test_dequantize_random_blocks_matches_gguf_and_ggml(type_):
    raw = random_rows(type_, np.random.default_rng(int(type_)))
    ours = dequantize(raw, type_)
    assert ours.shape == (4, 16 * BLOCK_LAYOUT[type_][0])
    assert_same_bits(ours, gguf_dequantize(raw, type_))
    assert_same_bits(ours, ggml_dequantize(raw, type_))


@pytest.mark.parametrize("type_", [T.F16, T.BF16], ids=lambda t: t.name)
def test_dequantize_16_bit_floats_matches_ggml_on_every_bit_pattern(type_):
    bits = np.arange(1 << 16, dtype=np.uint16)
    ours = dequantize(bits.view(np.uint8), type_)
    ref = ggml_ref.dequantize_row(bits.view(np.uint8), type_)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    assert_same_bits(ours[~nan], ref[~nan])
    typed = bits.view(np.float16) if type_ == T.F16 else bits
    assert_same_bits(dequantize(typed, type_), ours)


def test_dequantize_f32_passes_values_through():
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    assert_same_bits(dequantize(x, T.F32), x)
    assert_same_bits(dequantize(x.view(np.uint8), T.F32, n=8), x)


def test_dequantize_keeps_leading_axes():
    raw = random_rows(T.Q4_K, np.random.default_rng(1), n_rows=6, n_blocks=2).reshape(2, 3, -1)
    assert_same_bits(dequantize(raw, T.Q4_K, n=512), dequantize(raw.reshape(6, -1), T.Q4_K).reshape(2, 3, 512))


# every listed type occurs in one of llama.cpp's quantisations of the synthetic model
LLAMA_CPP_QUANTS = {"Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1, "Q8_0": T.Q8_0,
                    "Q2_K": T.Q2_K, "Q3_K_M": T.Q3_K, "Q4_K_M": T.Q4_K, "Q5_K_M": T.Q5_K, "Q6_K": T.Q6_K}


@pytest.mark.parametrize("quant", [*LLAMA_CPP_QUANTS, None], ids=lambda q: q or "F16")
def test_dequantize_llama_cpp_quantised_tensors(make_model, quant):
    path = make_model(quant=quant) if quant else make_model(ftype="f16")
    with read_gguf(path) as f:
        types = {info.type for info in f.tensors.values()}
        assert (LLAMA_CPP_QUANTS[quant] if quant else T.F16) in types
        for name, info in f.tensors.items():
            raw = f.tensor(name)[:1024]  # the embedding and output matrices have 32000 rows
            ours = dequantize(raw, info.type, n=info.dims[0])
            ref_raw = raw.view(np.uint8) if info.type in (T.F32, T.F16) else raw
            assert_same_bits(ours, gguf_dequantize(ref_raw, info.type))
            if info.type != T.F32:
                assert_same_bits(ours[:8], ggml_dequantize(ref_raw.reshape(len(raw), -1)[:8], info.type))


@pytest.mark.parametrize("quant", PURE_K_TYPES)
def test_pure_quantisations_keep_every_matrix_in_their_type(make_model, quant):
    """The bench's pure K files (llama.cpp's ``pure`` flag): output and embedding included, as the gguf
    package reads them."""
    reader = gguf.GGUFReader(make_model(quant=quant))
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {quant.removesuffix("_pure")}


# ---------------------------------------------------------------- unpacking

def _per_weight(per_sub: np.ndarray) -> np.ndarray:
    return np.repeat(per_sub.astype(np.float64), QK_K // per_sub.shape[-1], axis=-1)


def weights_by_contract(blocks) -> tuple[np.ndarray, np.ndarray]:
    """The two terms whose sum is each weight as the module docstring defines it, in float64."""
    d = blocks.d.astype(np.float64)[..., None]
    q = blocks.q.astype(np.float64)
    match blocks:
        case Blocks():
            return d * q, np.zeros_like(q)
        case BlocksWithMin():
            return d * q, np.broadcast_to(blocks.m[..., None], q.shape)
        case SuperBlocks():
            return d * _per_weight(blocks.scales) * q, np.zeros_like(q)
        case SuperBlocksWithMin():
            return d * _per_weight(blocks.scales) * q, -blocks.dmin[..., None] * _per_weight(blocks.mins)


@pytest.mark.parametrize("type_", QUANTISED, ids=lambda t: t.name)
def test_unpack_keeps_its_documented_contract(type_):
    kind, q_range, scale_range, min_range = CONTRACT[type_]
    raw = random_rows(type_, np.random.default_rng(100 + int(type_)), n_rows=3, n_blocks=64)
    blocks = unpack(raw, type_)
    assert type(blocks) is kind
    block_size = BLOCK_LAYOUT[type_][0]
    assert blocks.q.dtype == np.int8 and blocks.q.shape == (3, 64, block_size)
    assert (blocks.q.min(), blocks.q.max()) == q_range
    assert blocks.d.dtype == np.float32 and blocks.d.shape == (3, 64)
    if scale_range:
        assert blocks.scales.dtype == np.int8 and (blocks.scales.min(), blocks.scales.max()) == scale_range
    if min_range:
        assert blocks.mins.dtype == np.int8 and (blocks.mins.min(), blocks.mins.max()) == min_range
    ref = gguf_dequantize(raw, type_).reshape(3, 64, block_size)
    scaled, offset = weights_by_contract(blocks)
    assert np.all(np.abs(scaled + offset - ref) <= 1e-6 * (np.abs(scaled) + np.abs(offset)))


def test_unpack_rejects_float_types():
    with pytest.raises(ValueError, match="F16"):
        unpack(np.zeros((2, 64), np.uint8), T.F16)


# ---------------------------------------------------------------- activation quantisers

def activations(rng: np.random.Generator, n_rows: int, n: int) -> np.ndarray:
    """Activation-like rows: normal values at scales from 1e-3 to 1e3, one all-zero block, and exact ties."""
    x = rng.standard_normal((n_rows, n)) * 10 ** rng.uniform(-3, 3, (n_rows, 1))
    x[0, :QK_K] = 0
    x[1] = 10 * rng.standard_normal(n)  # well below the 127 that starts each tie block
    ties = (np.arange(-63, 63) + 0.5).astype(np.float32)  # quantised with amax = 127: x * (127 / 127) = x
    x[1, :QK] = np.concatenate([[127], ties[rng.choice(len(ties), QK - 1)]])
    x[1, QK_K:QK_K + 1 + len(ties)] = np.concatenate([[-127], ties])  # Q8_K: iscale = -127 / -127 = 1
    return x.astype(np.float32)


@pytest.mark.parametrize("type_", ACTIVATIONS, ids=lambda t: t.name)
def test_quantize_matches_ggml_cpu_backend(type_):
    x = activations(np.random.default_rng(7), 6, 4 * QK_K)
    ours = ACTIVATIONS[type_](x)
    assert ours.dtype == np.uint8 and ours.shape == (6, 4 * QK_K // BLOCK_LAYOUT[type_][0] * BLOCK_LAYOUT[type_][1])
    np.testing.assert_array_equal(ours, ggml_ref.quantize_row(x, type_))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.sampled_from([QK_K, 2 * QK_K]), elements=(
    st.floats(2.0**-100, 2.0**20, width=32) | st.floats(-2.0**20, -2.0**-100, width=32)
    | st.sampled_from([0.0, 0.5, -1.5, 2.5]))))
def test_quantize_matches_ggml_on_arbitrary_rows(x):
    # a block whose largest magnitude is below 127 / FLT_MAX overflows ggml's multiplier to inf; not covered
    for type_, quantize in ACTIVATIONS.items():
        np.testing.assert_array_equal(quantize(x), ggml_ref.quantize_row(x, type_))


def test_q8_0_rounds_ties_to_even_unlike_the_scalar_reference():
    # ggml-cpu/arch/x86/quants.c, quantize_row_q8_0: `v0 = _mm256_round_ps( v0, _MM_ROUND_NEAREST );`
    # rounds halves to even; ggml-quants.c quantize_row_q8_0_ref (and gguf.quants) use roundf, away from zero.
    x = np.array([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] + [0.25] * 24, dtype=np.float32)
    q = unpack(quantize_q8_0(x), T.Q8_0).q[0]
    np.testing.assert_array_equal(q, np.rint(x).astype(np.int8))
    np.testing.assert_array_equal(quantize_q8_0(x), ggml_ref.quantize_row(x, T.Q8_0))
    assert not np.array_equal(quantize_q8_0(x), gguf_quants.quantize(x, gguf.GGMLQuantizationType.Q8_0))


def test_q8_0_matches_gguf_away_from_ties():
    # with amax = 127, d = 1 and both multipliers (127 / amax and 1 / d) are exactly 1
    rng = np.random.default_rng(3)
    x = rng.integers(-126, 126, (8, 4 * QK)) + rng.uniform(0.05, 0.45, (8, 4 * QK)) * rng.choice([-1, 1], (8, 4 * QK))
    x[:, ::QK] = 127
    x = x.astype(np.float32)
    np.testing.assert_array_equal(quantize_q8_0(x), gguf_quants.quantize(x, gguf.GGMLQuantizationType.Q8_0))


def test_q8_1_sum_and_q8_K_bsums_describe_their_quants():
    x = activations(np.random.default_rng(5), 3, 2 * QK_K)
    q8_1 = unpack(quantize_q8_1(x), T.Q8_1)
    assert isinstance(q8_1, Q8_1Blocks)
    expected_s = (q8_1.d * q8_1.q.sum(axis=-1)).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(q8_1.s, expected_s, rtol=1e-3)
    q8_K = unpack(quantize_q8_K(x), T.Q8_K)
    assert isinstance(q8_K, Q8_KBlocks) and q8_K.bsums.dtype == np.int16
    np.testing.assert_array_equal(q8_K.bsums, q8_K.q.reshape(3, 2, 16, 16).sum(axis=-1))
    assert_same_bits(dequantize(quantize_q8_K(x), T.Q8_K), ggml_dequantize(quantize_q8_K(x), T.Q8_K))


def test_q8_K_repacked_rows_use_ggml_4x8_quantiser():
    x = activations(np.random.default_rng(11), 7, 2 * QK_K)
    for row in (2, 5):  # -amax before +amax: the row and the 4-row quantisers pick opposite signs
        x[row, 3], x[row, 9] = -1e4, 1e4
    ours = quantize_q8_K(x, grouped=True)
    np.testing.assert_array_equal(ours[:4], ggml_ref.quantize_mat_4x8(x[:4], T.Q8_K))
    np.testing.assert_array_equal(ours[4:], ggml_ref.quantize_row(x[4:], T.Q8_K))
    assert not np.array_equal(ours[2], quantize_q8_K(x[2]))
    planes = np.stack([x, x[::-1]])  # (2, 7, n): grouping runs along axis -2 of each plane
    np.testing.assert_array_equal(quantize_q8_K(planes, grouped=True)[1], quantize_q8_K(x[::-1], grouped=True))


def test_q8_0_repacked_4x8_quantiser_equals_the_row_quantiser():
    x = activations(np.random.default_rng(13), 4, 2 * QK_K)
    np.testing.assert_array_equal(quantize_q8_0(x), ggml_ref.quantize_mat_4x8(x, T.Q8_0))


# ---------------------------------------------------------------- bad input

def test_dequantize_rejects_a_partial_block():
    with pytest.raises(ValueError, match=r"Q4_0 row of 35 bytes"):
        dequantize(np.zeros((2, 35), np.uint8), T.Q4_0)
    with pytest.raises(ValueError, match=r"Q6_K row of 211 bytes"):
        unpack(np.zeros(211, np.uint8), T.Q6_K)
    with pytest.raises(ValueError, match="BF16 row of 7 bytes"):
        dequantize(np.zeros(7, np.uint8), T.BF16)


def test_dequantize_rejects_a_wrong_row_length():
    with pytest.raises(ValueError, match="rows of 32 weights, expected 64"):
        dequantize(np.zeros((2, 18), np.uint8), T.Q4_0, n=64)


def test_dequantize_rejects_non_byte_data():
    with pytest.raises(TypeError, match="Q8_0 data must be a uint8 array, got float32"):
        dequantize(np.zeros((2, 34), np.float32), T.Q8_0)
    with pytest.raises(TypeError, match="F16 data must be float16 or uint8"):
        dequantize(np.zeros(4, np.float64), T.F16)


@pytest.mark.parametrize("quantize, block", [(quantize_q8_0, QK), (quantize_q8_1, QK), (quantize_q8_K, QK_K)])
def test_quantize_rejects_rows_of_partial_blocks(quantize, block):
    with pytest.raises(ValueError, match=f"multiple of {block}"):
        quantize(np.zeros((2, block + 8), np.float32))
