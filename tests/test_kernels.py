"""The compiled kernels against their NumPy twins in ``engine``.

Quantised activations must be byte-identical to ``engine.quants``; products and the
float steps bit-identical to ``engine.exact.NumpyBackend``, in the orders of llama.cpp built
for AVX2 and for AVX-512 alike (``ISA``: the kernels' number for each); a whole model must
give the same logits, bit for bit, on either backend; bad input must raise ValueError.
"""
import numpy as np
import pytest

from engine.compiled import CythonBackend
from engine.isa import ISAS
from engine.exact import NumpyBackend
from engine.ggml_math import gelu_table, rope_cos_sin
from engine.llama import Llama
from engine.operands import Rope, Weight
from engine.quants import BLOCK_LAYOUT, GGMLType, quantize_q8_0, quantize_q8_1, quantize_q8_K
from kernels import layers, matmul
from tests.helpers import nmse
from tests.kernel_inputs import F16_FIELDS, PRODUCT_TYPES, activations, bf16_bits, random_weights

T = GGMLType
REF = NumpyBackend()
REFS = {isa: NumpyBackend(isa=isa) for isa in ISAS}
ISA = {isa: i for i, isa in enumerate(ISAS)}  # the kernels' isa argument

# ---------------------------------------------------------------- activation quantisers

@pytest.mark.parametrize("act_type, twin", [(T.Q8_0, quantize_q8_0), (T.Q8_1, quantize_q8_1)])
def test_q8_quantisers_byte_identical(act_type, twin):
    x = activations(np.random.default_rng(1), 9, 1024)
    assert np.array_equal(matmul.quantize(x, act_type), twin(x))


@pytest.mark.parametrize("grouped", [False, True])
def test_q8_K_quantiser_byte_identical(grouped):
    x = activations(np.random.default_rng(2), 7, 1024)
    assert np.array_equal(matmul.quantize(x, T.Q8_K, grouped=grouped), quantize_q8_K(x, grouped=grouped))


def test_bf16_rounding_byte_identical():
    """Ties both ways, the largest bf16 and past it (infinity), infinities, NaNs of either sign."""
    x = activations(np.random.default_rng(3), 3, 512)
    x[2, :8] = np.array([0x3F808000, 0x3F818000, 0x7F7F7FFF, 0x7F7F8000, 0x7F800000, 0xFF800000, 0x7F800001,
                         0xFFC12345], np.uint32).view(np.float32)
    assert np.array_equal(matmul.quantize(x, T.BF16).view(np.uint16), bf16_bits(x))


def test_q8_K_grouping_changes_only_the_sign_choice():
    x = np.zeros((4, 256), np.float32)
    x[:, 0], x[:, 1] = -2.0, 2.0  # -amax first: the row quantiser and the grouped one pick opposite signs
    row, grouped = matmul.quantize(x, T.Q8_K), matmul.quantize(x, T.Q8_K, grouped=True)
    assert not np.array_equal(row, grouped)
    assert np.array_equal(grouped, quantize_q8_K(x, grouped=True))


# ---------------------------------------------------------------- matrix products

# one and several activation rows: the vec_dot kernels (1), tinyBLAS and the few-row K-quant
# kernels (2..7), the tiled K-quant kernel (8+); whole groups of four and remainders for the repacked ones
TOKEN_COUNTS = [1, 2, 3, 4, 5, 8, 9, 17]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
# rows a multiple of 8 (repacked: Q4_0, Q4_K, on AVX-512 Q2_K); of 4 only; of neither
@pytest.mark.parametrize("n_out", [40, 36, 21])
def test_matmul_bit_identical_to_numpy(type_, n_out, isa):
    rng = np.random.default_rng(int(type_) * 100 + n_out)
    n_in = 512
    w = Weight("w", type_, n_in, n_out, random_weights(rng, type_, n_out, n_in))
    m = matmul.Matrix(w.data, int(type_), n_in, repacked=w.repacked(isa), isa=ISA[isa])
    for n in TOKEN_COUNTS:
        x = activations(rng, n, n_in)
        assert np.array_equal(m.matmul(x, n_threads=2), REFS[isa].matmul(w, x)), n


@pytest.mark.parametrize("type_", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_k_quant_rows_of_long_inputs_bit_identical(type_):
    """Rows of 224 super-blocks: where the tiled kernel takes the tokens sixteen a lane-set (AVX-512
    VNNI), it meets them in blocks whose activations stay in L2, here of 16 tokens (three blocks)."""
    rng = np.random.default_rng(int(type_))
    n_in = 256 * 224
    w = Weight("w", type_, n_in, 21, random_weights(rng, type_, 21, n_in))
    x = activations(rng, 40, n_in)
    assert np.array_equal(matmul.Matrix(w.data, int(type_), n_in).matmul(x, n_threads=2), REF.matmul(w, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("n_in", [3, 8, 40, 264, 515, 96])  # tails past the last step (32, 64); rows tinyBLAS declines
def test_float_matmul_bit_identical_for_any_row_length(type_, n_in, isa):
    rng = np.random.default_rng(n_in)
    w = Weight("w", type_, n_in, 12, random_weights(rng, type_, 12, n_in))
    m = matmul.Matrix(w.data, int(type_), n_in, isa=ISA[isa])
    for n in (1, 2, 5):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        assert np.array_equal(m.matmul(x), REFS[isa].matmul(w, x)), n


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_matmul_of_long_rows_bit_identical(type_, isa):
    """Rows of 16384 values: a thread takes 1 MiB of weight rows at a time (chunks of 32 F16 rows,
    16 F32 ones), against the widened activations in blocks of 512 KiB (6 tokens, three blocks)."""
    rng = np.random.default_rng(int(type_))
    n_in, n_out = 16384, 72
    w = Weight("w", type_, n_in, n_out, random_weights(rng, type_, n_out, n_in))
    x = rng.standard_normal((14, n_in)).astype(np.float32)
    assert np.array_equal(matmul.Matrix(w.data, int(type_), n_in, isa=ISA[isa]).matmul(x, n_threads=2),
                          REFS[isa].matmul(w, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_", [T.F16, T.BF16], ids=lambda t: t.name)
def test_float_matmul_rounds_activations_as_ggml(type_, isa):
    """The tiles' activations, rounded to f16 or bf16 once per product: ties both ways, the largest
    finite value and past it (infinity), infinities and NaNs (one token each, so the others stay finite)."""
    rng = np.random.default_rng(int(type_) + 7)
    w = Weight("w", type_, 64, 8, random_weights(rng, type_, 8, 64))
    x = rng.standard_normal((6, 64)).astype(np.float32)
    ties = [0x3F801000, 0x3F803000] if type_ == T.F16 else [0x3F808000, 0x3F818000]
    x[0, :4] = np.array(ties + [0xBF801000, 0xBF818000], np.uint32).view(np.float32)
    x[1, 3], x[2, 5] = (65504.0, 65520.0) if type_ == T.F16 else np.array([0x7F7F7FFF, 0x7F7F8000], np.uint32).view(
        np.float32)
    x[3, 7], x[4, 9] = np.inf, -np.inf
    x[5, 11] = np.array(0xFFC12345, np.uint32).view(np.float32)
    got = matmul.Matrix(w.data, int(type_), 64, isa=ISA[isa]).matmul(x)
    with np.errstate(over="ignore", invalid="ignore"):  # the reference's casts of the infinite sums
        assert np.array_equal(got, REFS[isa].matmul(w, x), equal_nan=True)


@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
def test_matmul_on_two_threads_bit_identical(type_):
    """Big enough that the product (and the quantisation of its 9 rows) is split over threads."""
    rng = np.random.default_rng(int(type_))
    n_out, n_in = 264, 1024
    w = Weight("w", type_, n_in, n_out, random_weights(rng, type_, n_out, n_in))
    m = matmul.Matrix(w.data, int(type_), n_in, repacked=w.repacked())
    x = activations(rng, 9, n_in)
    ref = REF.matmul(w, x)
    assert np.array_equal(m.matmul(x, 1), ref)
    assert np.array_equal(m.matmul(x, 2), ref)


@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("regroup", [False, True], ids=["in place", "regrouped"])
def test_one_row_shared_by_threads_bit_identical(type_, regroup):
    """One row (a decoded token) of a product big enough to share gives the same bits on any team:
    each thread quantises the row itself and takes its run of the groups or chunks of rows."""
    rng = np.random.default_rng(int(type_))
    n_out, n_in = 520, 1024
    w = Weight("w", type_, n_in, n_out, random_weights(rng, type_, n_out, n_in))
    m = matmul.Matrix(w.data, int(type_), n_in, repacked=w.repacked(), regroup=regroup)
    x = activations(rng, 1, n_in)
    got = {n_threads: m.matmul(x, n_threads) for n_threads in (3, 2, 1)}  # before the reference frees any buffer
    ref = REF.matmul(w, x)
    for n_threads, out in got.items():
        assert np.array_equal(out, ref), n_threads


# the weights llama.cpp repacks, with the build that repacks them
REPACKED = [(T.Q4_0, "avx2"), (T.Q4_K, "avx2"), (T.Q2_K, "avx512")]


@pytest.mark.parametrize("type_, isa", REPACKED, ids=lambda p: getattr(p, "name", p))
@pytest.mark.parametrize("regroup", [False, True], ids=["in place", "regrouped"])
def test_repacked_matrix_bit_identical(type_, isa, regroup):
    """Weights llama.cpp repacks give its repacked kernels' results whether the Matrix regroups
    their rows at load or a group at a time while multiplying; one-row (batch-invariant)
    products give every row the one-token kernel's."""
    rng = np.random.default_rng(int(type_) + regroup)
    data = random_weights(rng, type_, 64, 512)
    w = Weight("w", type_, 512, 64, data)
    m = matmul.Matrix(data, int(type_), 512, repacked=True, regroup=regroup, isa=ISA[isa])
    assert m.regrouped == regroup
    for n in TOKEN_COUNTS:
        x = activations(rng, n, 512)
        assert np.array_equal(m.matmul(x, 2), REFS[isa].matmul(w, x)), n
        alone = np.concatenate([REFS[isa].matmul(w, x[t:t + 1]) for t in range(n)])
        assert np.array_equal(m.matmul(x, 2, rowwise=True), alone), n


@pytest.mark.parametrize("type_", [T.Q4_0, T.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("sign", [1, -1])
def test_repacked_one_token_extremes_bit_identical(type_, sign):
    """The one-token repacked kernels at their integers' largest: every nibble 15 (with VNNI the high
    nibbles are summed at 16 times their value), every Q4_K scale and min 63, activations all +-127."""
    rng = np.random.default_rng(3)
    data = random_weights(rng, type_, 16, 1024)
    block, size = BLOCK_LAYOUT[type_]
    blocks = data.reshape(16, 1024 // block, size)
    fields = 2 * len(F16_FIELDS[type_])  # the f16 scales come first; all ones after them
    blocks[..., fields:] = 0xFF
    w = Weight("w", type_, 1024, 16, data)
    m = matmul.Matrix(data, int(type_), 1024, repacked=True, isa=ISA["avx2"])
    x = np.full((1, 1024), sign * 0.5, np.float32)
    assert np.array_equal(m.matmul(x, 1), REFS["avx2"].matmul(w, x))


def raw_activations(type_, x):
    """x as the raw activation row that weights of ``type_`` pair with in ggml."""
    if type_ in (T.F32, T.F16):
        return x.astype(np.float32 if type_ == T.F32 else np.float16)
    if type_ == T.BF16:
        return bf16_bits(x)
    return {T.Q4_1: quantize_q8_1, T.Q5_1: quantize_q8_1}.get(
        type_, quantize_q8_K if type_ >= T.Q2_K else quantize_q8_0)(x)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
def test_vec_dot_one_row_bit_identical(type_, isa):
    rng = np.random.default_rng(5)
    data = random_weights(rng, type_, 1, 512)
    x = activations(rng, 2, 512)[1:]
    expected = REFS[isa].matmul(Weight("w", type_, 512, 1, data), x)[0, 0]
    assert matmul.vec_dot(int(type_), data[0], raw_activations(type_, x)[0], ISA[isa]) == expected


@pytest.mark.parametrize("regroup", [True, False])  # regrouped, or its rows copied as they are onto huge pages
def test_copying_keeps_mmap_source_readable(tmp_path, regroup):
    rng = np.random.default_rng(7)
    data = random_weights(rng, T.Q4_0, 32, 256)
    path = tmp_path / "w.bin"
    data.tofile(path)
    mapped = np.memmap(path, np.uint8, "r", shape=data.shape)
    import mmap
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(buf, np.uint8).reshape(data.shape)
    assert matmul.is_file_mapping(view) and not matmul.is_file_mapping(data)
    m = matmul.Matrix(view, int(T.Q4_0), 256, repacked=True, regroup=regroup, release_source=True)
    assert np.array_equal(view, data) and np.array_equal(mapped, data)  # dropped pages read back from the file
    x = activations(rng, 2, 256)
    assert np.array_equal(m.matmul(x), REF.matmul(Weight("w", T.Q4_0, 256, 32, data), x))


# ---------------------------------------------------------------- layer steps (bit-identical)

def squares_summed_in_order(x):
    """RMSNorm's sum of squares added left to right in double (ggml's order, not NumPy's pairwise one)."""
    total = 0.0
    for square in (x * x).astype(np.float64):
        total += square
    return total


@pytest.mark.parametrize("d", [7, 300, 2048, 5000])
def test_rms_norm_bit_identical(d):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((5, d)) * np.exp(rng.uniform(-8, 8, (5, d)))).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    for n_threads in (1, 2):
        assert np.array_equal(layers.rms_norm(x, w, 1e-5, n_threads), REF.rms_norm(x, w, 1e-5))


def test_rms_norm_sums_left_to_right_like_ggml():
    """A row whose mean of squares ties between two floats when added in ggml's order; NumPy's
    own pairwise sum keeps enough of the 252 tiny squares to round it up instead.  Five such
    rows: four normalised together and one alone."""
    x = np.full((5, 256), 2.0 ** -23, np.float32)
    x[:, :4] = [16, -16, 2.0 ** -8, -2.0 ** -8]
    w = np.ones(256, np.float32)
    in_order = np.float32(squares_summed_in_order(x[0]) / 256)         # 2 + 2^-23 exactly, rounded to even: 2
    pairwise = np.float32((x * x).astype(np.float64).sum() / 256)        # a little more: 2 + 2^-22
    assert in_order != pairwise
    expected = x * (np.float32(1.0) / np.sqrt(in_order + np.float32(1e-5))) * w
    assert np.array_equal(REF.rms_norm(x, w, 1e-5), expected)
    assert np.array_equal(layers.rms_norm(x, w, 1e-5, 1), expected)


@pytest.mark.parametrize("rope, head_dim", [(Rope(64, 10000.0), 64), (Rope(32, 500000.0, 0.25), 64),
                                            (Rope(40, 10000.0, 0.5), 48), (Rope(128, 1e6), 128),
                                            (Rope(64, 10000.0, neox=True), 64), (Rope(40, 1e6, 0.5, neox=True), 48),
                                            (Rope(256, 1e6, neox=True), 256), (Rope(6, 10000.0, neox=True), 6)])
def test_rope_bit_identical(rope, head_dim):
    """Many positions (glibc's cosf/sinf differ from rounded double cos/sin on about 1% of these
    angles), large ones, n_dims below the head size, linear scaling."""
    rng = np.random.default_rng(rope.n_dims)
    positions = np.concatenate([np.arange(0, 5001, 37), [4095, 16383, 100000]])
    x = rng.standard_normal((len(positions), 5, head_dim)).astype(np.float32)
    ref = REF.rope(x, positions, rope)
    angles = layers.rope_cos_sin(positions, rope.n_dims, rope.freq_base, rope.freq_scale)
    assert all(np.array_equal(ours, twin) for ours, twin in zip(angles, rope_cos_sin(positions, rope)))
    for n_threads in (1, 2):
        assert np.array_equal(layers.rope(x, *angles, n_threads, rope.neox), ref)
    assert np.array_equal(CythonBackend(2).rope(x, positions, rope), ref)
    k = rng.standard_normal((len(positions), 2, head_dim)).astype(np.float32)  # fewer kv heads
    q_ours, k_ours = CythonBackend(2).rope_qk(x, k, positions, rope)
    assert np.array_equal(q_ours, ref) and np.array_equal(k_ours, REF.rope(k, positions, rope))
    wide = np.concatenate([x, x], axis=2)                                # rows of a wider product's output
    assert np.array_equal(layers.rope(wide[:, :, :head_dim], *angles, neox=rope.neox), ref)
    assert np.array_equal(wide[:, :, :head_dim], x)                     # rotated in a copy, never in place


@pytest.mark.parametrize("isa", ISAS)
def test_swiglu_bit_identical(isa):
    """ggml_v_expf's paths (AVX2's and AVX-512's): ordinary values, |n| > 126 (x beyond about
    +-87; AVX-512: subnormal results) and |n| > 192 (beyond about +-133, where the result is 0
    or infinity), huge values; a row length that is not a multiple of 8 takes the scalar tail."""
    rng = np.random.default_rng(10)
    special = [0.0, -0.0, 87.0, 88.0, 89.0, -87.0, -88.5, -103.0, -104.0, 133.0, 134.0, -133.0, -134.0, 3e38, -3e38]
    g = np.concatenate([5 * rng.standard_normal(4000), rng.uniform(-200, 200, 2000), rng.uniform(-1e4, 1e4, 200),
                        special]).astype(np.float32)
    g = np.stack([g, rng.permutation(g)])                                 # (2, 6215)
    u = rng.standard_normal(g.shape).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = REFS[isa].swiglu(g, u)
    for n_threads in (1, 2):
        assert np.array_equal(layers.swiglu(g, u, n_threads, ISA[isa]), ref)


def test_geglu_bit_identical():
    """Both sides of the table's +-10 bounds, values that round to f16 subnormals or overflow it,
    and a gate read in place from a wider row; the table is ggml's own (see test_families)."""
    rng = np.random.default_rng(12)
    special = [0.0, -0.0, 10.0, -10.0, 9.999, -9.999, 10.001, -10.001, 1e-6, -1e-6, 65519.0, 3e38, -3e38]
    g = np.concatenate([3 * rng.standard_normal(5000), rng.uniform(-20, 20, 1000), special]).astype(np.float32)
    both = np.stack([g, rng.permutation(g), rng.standard_normal(g.size).astype(np.float32),
                     rng.standard_normal(g.size).astype(np.float32)]).reshape(2, -1)  # (2, gate | up)
    gate, up = both[:, :g.size], both[:, g.size:]
    with np.errstate(over="ignore", invalid="ignore"):
        ref = REF.geglu(np.ascontiguousarray(gate), np.ascontiguousarray(up))
    for n_threads in (1, 2):
        assert np.array_equal(layers.geglu(gate, up, gelu_table(), n_threads), ref)
    assert np.array_equal(CythonBackend(1).geglu(gate, up), ref)
    with pytest.raises(ValueError, match="table"):
        layers.geglu(gate, up, gelu_table().astype(np.float32))


def test_swiglu_reads_rows_at_any_stride():
    """The gate and up halves of one stacked product's output are read in place, as are rows
    stepped or reversed; values that are not adjacent, or not float32, are converted first."""
    rng = np.random.default_rng(11)
    both = (4 * rng.standard_normal((6, 2 * 37))).astype(np.float32)  # (n, gate | up)
    gate, up = both[:, :37], both[:, 37:]
    ref = REF.swiglu(np.ascontiguousarray(gate), np.ascontiguousarray(up))
    for view in (slice(None), slice(None, None, 2), slice(None, None, -1)):
        for n_threads in (1, 2):
            assert np.array_equal(layers.swiglu(gate[view], up[view], n_threads), ref[view])
    wide = np.repeat(both, 2, axis=1)                                   # each value twice: inner stride 2
    assert np.array_equal(layers.swiglu(wide[:, :74:2], wide[:, 74::2]), ref)
    assert np.array_equal(layers.swiglu(gate.astype(np.float64), up), ref)


@pytest.mark.parametrize("n_heads, n_kv_heads, head_dim, start, n", [
    (4, 4, 64, 0, 1), (4, 1, 32, 12, 1), (8, 2, 64, 300, 1), (4, 2, 128, 2047, 1),  # one row: ggml_vec_dot_f16
    (16, 2, 64, 100, 1), (9, 3, 64, 50, 1), (6, 1, 128, 9, 1),                   # one row: groups past ROW_GROUP
    (4, 2, 48, 37, 1), (2, 1, 20, 20, 1), (4, 2, 96, 40, 1),                     # tails past 32 (AVX-512: 64)
    (4, 4, 64, 0, 5), (8, 2, 64, 7, 3), (4, 2, 64, 100, 70),                     # several rows: tinyBLAS
    (16, 2, 128, 30, 21), (9, 3, 80, 0, 40), (14, 2, 16, 3, 9),                  # head groups of 8, 3, 7
    (4, 2, 12, 5, 4), (4, 2, 36, 10, 4), (2, 1, 20, 20, 3),                      # q.K by vec_dot, P.V by tinyBLAS
    (2, 1, 10, 20, 3), (4, 2, 6, 10, 4),                                         # neither takes tinyBLAS
])
@pytest.mark.parametrize("isa", ISAS)
def test_attention_bit_identical(n_heads, n_kv_heads, head_dim, start, n, isa):
    """Keys (start + n) not a multiple of 8 or 32, GQA groups, the float_dots orders of every shape."""
    rng = np.random.default_rng(n_heads * 1000 + head_dim + start + n)
    n_ctx = start + n + 5
    q = (3 * rng.standard_normal((n, n_heads, head_dim))).astype(np.float32)
    k = (2 * rng.standard_normal((n_kv_heads, n_ctx, head_dim))).astype(np.float16)
    v = rng.standard_normal((n_kv_heads, n_ctx, head_dim)).astype(np.float16)
    scale = 1 / np.sqrt(np.float32(head_dim))
    ref = REFS[isa].attention(q, k, v, start, scale)
    for n_threads in (1, 2):
        assert np.array_equal(layers.attention(q, k, v, start, scale, n_threads, isa=ISA[isa]), ref)


@pytest.mark.parametrize("n_heads, n_kv_heads, head_dim", [(8, 2, 64), (16, 2, 128), (9, 3, 64), (4, 4, 256)])
@pytest.mark.parametrize("isa", ISAS)
def test_one_row_attention_sums_scores_in_order(n_heads, n_kv_heads, head_dim, isa):
    """Scores near 1024 (every key and query share a large first component), so that a q.k summed in
    another order moves a score by an ulp of 1024 and the f16 probability after it often enough: with
    random queries and keys the f16 rounding of the probabilities hides a wrong order of the scores."""
    rng = np.random.default_rng(n_heads + head_dim)
    start, n_ctx = 300, 310
    q = (3 * rng.standard_normal((1, n_heads, head_dim))).astype(np.float32)
    k = (2 * rng.standard_normal((n_kv_heads, n_ctx, head_dim))).astype(np.float16)
    v = rng.standard_normal((n_kv_heads, n_ctx, head_dim)).astype(np.float16)
    q[..., 0], k[..., 0] = 32, 32
    ref = REFS[isa].attention(q, k, v, start, np.float32(1))
    for n_threads in (1, 2):
        assert np.array_equal(layers.attention(q, k, v, start, 1.0, n_threads, isa=ISA[isa]), ref)


@pytest.mark.parametrize("n_heads, n_kv_heads, head_dim, start, n, window", [
    (4, 1, 256, 600, 1, 64), (4, 1, 256, 600, 1, 512), (8, 2, 64, 200, 1, 1),   # one row, windows past 64 keys
    (4, 2, 64, 100, 70, 16), (4, 2, 64, 0, 130, 64), (2, 1, 20, 200, 3, 50),     # several rows: tinyBLAS
    (2, 1, 10, 150, 3, 100), (4, 4, 32, 0, 5, 1000),                           # neither; a window wider than the keys
])
@pytest.mark.parametrize("isa", ISAS)
def test_windowed_attention_bit_identical(n_heads, n_kv_heads, head_dim, start, n, window, isa):
    """A sliding window: the compiled kernel skips whole blocks of 64 keys before it; the reference masks them."""
    rng = np.random.default_rng(n_heads * 1000 + head_dim + start + n + window)
    n_ctx = start + n + 5
    q = (3 * rng.standard_normal((n, n_heads, head_dim))).astype(np.float32)
    k = (2 * rng.standard_normal((n_kv_heads, n_ctx, head_dim))).astype(np.float16)
    v = rng.standard_normal((n_kv_heads, n_ctx, head_dim)).astype(np.float16)
    ref = REFS[isa].attention(q, k, v, start, 0.125, window)
    if window < start + n:
        assert not np.array_equal(ref, REFS[isa].attention(q, k, v, start, 0.125))  # the window matters
    for n_threads in (1, 2):
        assert np.array_equal(layers.attention(q, k, v, start, 0.125, n_threads, window, isa=ISA[isa]), ref)


def test_f16_tail_is_added_one_product_at_a_time():
    """Past the last multiple of 32, ggml_vec_dot_f16 adds each product to its double sum in
    turn: 64 + 2^-18 + 3 * 2^-48 keeps the tie and rounds to 64, where summing the tail first
    rounds up.  Both the F16 product and attention's q.k take that order."""
    row = np.zeros(36, np.float32)
    row[0], row[32], row[33:] = 8, 2.0 ** -9, 2.0 ** -24
    in_turn = np.float32(np.float64(64) + 2.0 ** -18 + 2.0 ** -48 + 2.0 ** -48 + 2.0 ** -48)
    assert in_turn != np.float32(np.float64(64) + (2.0 ** -18 + 3 * 2.0 ** -48))
    w = Weight("w", T.F16, 36, 4, np.tile(row.astype(np.float16), (4, 1)))
    assert REF.matmul(w, row[None])[0, 0] == in_turn
    assert matmul.Matrix(w.data, int(T.F16), 36).matmul(row[None])[0, 0] == in_turn
    q = np.zeros((1, 1, 36), np.float32)
    q[0, 0] = row
    q[0, 0, 1] = 1
    keys, values = np.zeros((1, 3, 36), np.float16), np.zeros((1, 3, 36), np.float16)
    keys[0, 0], keys[0, 1, :2], values[0, 1] = row, (8, -2.0 ** -10), 1   # scores 64 (+ tail) and 64 - 2^-10
    assert np.array_equal(layers.attention(q, keys, values, 1, 1024.0, 1), REF.attention(q, keys, values, 1, 1024.0))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call", [
    lambda: matmul.Matrix(np.zeros((4, 18), np.uint8), 99, 32),                     # unknown type
    lambda: matmul.Matrix(np.zeros((4, 17), np.uint8), int(T.Q4_0), 32),            # wrong row bytes
    lambda: matmul.Matrix(np.zeros((4, 18), np.uint8), int(T.Q4_0), 33),            # not whole blocks
    lambda: matmul.Matrix(np.zeros((4, 36), np.uint8)[:, ::2], int(T.Q4_0), 32),    # not contiguous
    lambda: matmul.Matrix(np.zeros((4, 32), np.float64), int(T.F32), 32),           # wrong dtype
    lambda: matmul.Matrix(np.zeros((4, 18), np.uint8), int(T.Q4_0), 32, repacked=True),  # no group of 8 rows
    lambda: matmul.Matrix(np.zeros((8, 34), np.uint8), int(T.Q8_0), 32, repacked=True),  # a type never repacked
    lambda: matmul.Matrix(np.zeros((8, 18), np.uint8), int(T.Q4_0), 32).matmul(np.zeros((2, 64))),
    lambda: matmul.Matrix(np.zeros((8, 18), np.uint8), int(T.Q4_0), 32).matmul(np.zeros((2, 32)), n_threads=0),
    lambda: matmul.quantize(np.zeros(33, np.float32), int(T.Q8_0)),
    lambda: matmul.quantize(np.zeros(32, np.float32), int(T.Q4_0)),
    lambda: matmul.vec_dot(int(T.Q4_0), np.zeros(18, np.uint8), np.zeros(30, np.uint8)),
    lambda: matmul.release_file_pages([np.zeros(4096, np.uint8)]),                 # not an mmap: never dropped
    lambda: matmul.get_rows(np.zeros((4, 18), np.uint8), int(T.Q4_0), 32, [4]),
    lambda: matmul.get_rows(np.zeros((4, 18), np.uint8), int(T.Q4_0), 32, [[0]]),
    lambda: matmul.get_rows(np.zeros((4, 18), np.uint8), int(T.Q4_0), 64, [0]),
    lambda: layers.rms_norm(np.zeros((2, 8)), np.zeros(7), 1e-5),
    lambda: layers.rope(np.zeros((2, 1, 8)), np.zeros((1, 4)), np.zeros((1, 4))),
    lambda: layers.rope(np.zeros((1, 1, 8)), np.zeros((1, 5)), np.zeros((1, 5))),
    lambda: layers.rope_qk(np.zeros((1, 2, 8)), np.zeros((1, 1, 16)), np.zeros((1, 4)), np.zeros((1, 4))),
    lambda: layers.rope_cos_sin([[0]], 8, 10000.0),
    lambda: layers.rope_cos_sin([0], 7, 10000.0),
    lambda: layers.swiglu(np.zeros((2, 8)), np.zeros((2, 9))),
    lambda: layers.swiglu(np.zeros((2, 2, 8), np.float32), np.zeros((2, 2, 8), np.float32)),
    lambda: layers.attention(np.zeros((2, 4, 8)), np.zeros((2, 4, 8), np.float16),
                             np.zeros((2, 4, 8), np.float16), 3, 1.0),
    lambda: layers.attention(np.zeros((1, 4, 8)), np.zeros((2, 4, 8), np.float32),
                             np.zeros((2, 4, 8), np.float32), 0, 1.0),
    lambda: layers.attention(np.zeros((1, 3, 8)), np.zeros((2, 4, 8), np.float16),
                             np.zeros((2, 4, 8), np.float16), 0, 1.0),
    lambda: matmul.Matrix(np.zeros((8, 34), np.uint8), int(T.Q8_0), 32).matmul(np.zeros((2, 64), np.float32)),
    lambda: matmul.Blocks32Stack([np.zeros((8, 34), np.uint8), np.zeros((8, 144), np.uint8)],
                                 [int(T.Q8_0), int(T.Q4_K)], 256),                  # a type it does not mix
    lambda: matmul.Blocks32Stack([np.zeros((8, 34), np.uint8), np.zeros((8, 21), np.uint8)],
                                 [int(T.Q8_0), int(T.Q5_0)], 32),                   # wrong row bytes
    lambda: matmul.Blocks32Stack([np.zeros((8, 34), np.uint8)], [int(T.Q8_0), int(T.Q5_0)], 32),  # types != parts
    lambda: matmul.Blocks32Stack([np.zeros((8, 34), np.uint8)], [int(T.Q8_0)], 32).matmul(np.zeros((2, 64))),
    lambda: layers.rope_cos_sin(np.zeros((1, 1), np.int64), 8, 10000.0),
    lambda: layers.attention(np.zeros((1, 4, 8), np.float32), np.zeros((2, 4, 8), ">f2"),
                             np.zeros((2, 4, 8), ">f2"), 0, 1.0),
    lambda: layers.attention(np.zeros((1, 4, 8), np.float32), np.zeros((2, 8, 8), np.float16)[:, ::2],
                             np.zeros((2, 4, 8), np.float16), 0, 1.0),
    lambda: layers.attention(np.zeros((1, 4, 8), np.float32), np.zeros((2, 4, 8), np.float16),
                             np.zeros((2, 5, 8), np.float16), 0, 1.0),
], ids=lambda f: "")
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("ids", [np.array([4]), np.array([-1]), np.array([0, 2**40]), np.array([2**63 + 1], np.uint64),
                                 np.array([0.0]), np.array([True]), np.array([[0]]), np.array(0), [0, -3]])
def test_get_rows_rejects_ids_outside_the_rows(ids):
    with pytest.raises(ValueError, match=r"row ids must be a 1-D array of integers in \[0, 4\)"):
        matmul.get_rows(np.zeros((4, 34), np.uint8), int(T.Q8_0), 32, ids)


def unaligned(x):
    """A read-only copy of x whose values do not start on a 4-byte boundary."""
    raw = np.zeros(x.nbytes + 1, np.uint8)
    raw[1:] = np.ascontiguousarray(x).view(np.uint8).reshape(-1)
    return np.frombuffer(raw.data, x.dtype, offset=1).reshape(x.shape)


def test_inputs_in_any_layout_give_the_same_bits():
    """Arrays that the kernels cannot read as they are (another byte order, dtype or alignment,
    a subclass, a strided view, a list) are converted first: the same results as a plain array."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    layouts = [x.astype(">f4"), x.astype(np.float64), unaligned(x), x.view(np.matrix),
               np.repeat(x, 2, axis=0)[::2], x.tolist()]
    w = rng.standard_normal(32).astype(np.float32)
    m = matmul.Matrix(random_weights(rng, T.Q8_0, 8, 32), int(T.Q8_0), 32)
    for y in layouts:
        assert np.array_equal(layers.rms_norm(y, w, 1e-5), layers.rms_norm(x, w, 1e-5))
        assert np.array_equal(layers.rms_norm(x, unaligned(w), 1e-5), layers.rms_norm(x, w, 1e-5))
        assert np.array_equal(layers.swiglu(y, y), layers.swiglu(x, x))
        assert np.array_equal(m.matmul(y), m.matmul(x))
    q = x.reshape(3, 4, 8)
    cos, sin = layers.rope_cos_sin(np.array([5, 6, 7], np.int32), 8, 10000.0)
    assert all(np.array_equal(a, b) for a, b in zip((cos, sin), layers.rope_cos_sin([5, 6, 7], 8, 10000.0)))
    k, v = rng.standard_normal((2, 2, 10, 8)).astype(np.float16)
    for y in (q.astype(">f4"), unaligned(q), np.repeat(q, 2, axis=0)[::2]):
        assert np.array_equal(layers.rope(y, cos, sin), layers.rope(q, cos, sin))
        assert np.array_equal(layers.rope(q, unaligned(cos), sin.astype(">f4")), layers.rope(q, cos, sin))
        assert np.array_equal(layers.attention(y, k, v, 2, 0.3), layers.attention(q, k, v, 2, 0.3))
    data = random_weights(rng, T.Q8_0, 6, 32)
    rows = matmul.get_rows(data, int(T.Q8_0), 32, np.array([5, 0, 5]))
    for ids in (np.array([5, 0, 5], np.int32), np.array([5, 0, 5], np.uint64), [5, 0, 5],
                np.array([5, 5, 0, 0, 5])[::2]):
        assert np.array_equal(matmul.get_rows(data, int(T.Q8_0), 32, ids), rows)
    assert matmul.get_rows(data, int(T.Q8_0), 32, np.array([], np.float64)).shape == (0, 32)


def test_backend_rejects_bad_thread_count():
    with pytest.raises(ValueError):
        CythonBackend(n_threads=-1)


# ---------------------------------------------------------------- whole model

@pytest.mark.parametrize("quant", [None, "Q4_0", "Q4_K_M", "Q8_0"])
def test_model_logits_bit_identical_across_backends(make_model, quant):
    path = make_model(quant, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512)
    prompts = [[1, t] for t in range(300, 20300, 1000)]  # 20 two-token prompts, as in the llama.cpp parity tests
    with Llama(path, n_ctx=64, backend="numpy") as ref, Llama(path, n_ctx=64, backend="cython", n_threads=2) as ours:
        for p in prompts:
            assert np.array_equal(ref.get_logits(p), ours.get_logits(p)), p
        long = [1] + list(range(500, 32000, 800))
        assert np.array_equal(ref.eval_logits(long), ours.eval_logits(long))


@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
def test_get_rows_bit_identical(type_):
    rng = np.random.default_rng(int(type_))
    data = random_weights(rng, type_, 10, 512)
    ids = np.array([3, 0, 9, 3])
    ours = matmul.get_rows(data, int(type_), 512, ids)
    ref = REF.get_rows(Weight("w", type_, 512, 10, data), ids)
    if type_ in (T.Q2_K, T.Q3_K):
        assert ours is None
    else:
        assert np.array_equal(ours, ref)


@pytest.mark.parametrize("quant", ["Q4_0", "Q4_K_M", "Q6_K"])
def test_cython_backend_matches_llama_cpp(make_model, quant):
    """The compiled path against llama.cpp itself, with issue 7's bar for quantised files."""
    import llama_cpp  # the reference: missing, the test fails rather than skips
    from tests.model_files import quiet_llama_cpp

    path = make_model(quant, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512)
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, flash_attn=False, verbose=False, n_threads=1)
    with Llama(path, n_ctx=64, backend="cython", n_threads=2) as ours:
        scores = []
        for t in range(300, 20300, 1000):
            ref.reset()
            ref.eval([1, t])
            scores.append(nmse(np.array(ref.scores[1], np.float32), ours.get_logits([1, t])))
    ref.close()
    assert np.median(scores) <= 1e-8, scores
