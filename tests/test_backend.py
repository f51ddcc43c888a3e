"""The compiled backend's own composition: products of one input with several weights.

``CythonBackend.matmuls`` stacks the weights into one kernel matrix when that cannot
change a single bit; these tests hold it to the separate products and check it declines
the stacks that could.
"""
import numpy as np
import pytest

from engine.compiled import CythonBackend
from engine.exact import NumpyBackend
from engine.operands import Weight
from engine.quants import GGMLType
from kernels.matmul import Blocks32Stack, KQuantStack
from tests.kernel_inputs import PRODUCT_TYPES, activations, random_weights

T = GGMLType
REF = NumpyBackend()


def weights(rng, type_, n_outs, n_in=512):
    return tuple(Weight(f"w{i}", type_, n_in, n_out, random_weights(rng, type_, n_out, n_in))
                 for i, n_out in enumerate(n_outs))


@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 5, 8])
def test_stacked_products_equal_separate_ones(type_, n_tokens):
    rng = np.random.default_rng(int(type_) * 10 + n_tokens)
    ws = weights(rng, type_, (64, 16, 24))
    x = activations(rng, n_tokens, 512)
    backend = CythonBackend(2)
    assert backend.stacked(ws) is not None
    stacked = backend.matmuls(ws, x)
    separate = [CythonBackend(2).matmul(w, x) for w in ws]
    assert [a.shape for a in stacked] == [(n_tokens, w.n_out) for w in ws]
    for a, b in zip(stacked, separate):
        assert np.array_equal(a, b)


def test_stacks_only_what_cannot_change_a_result():
    rng = np.random.default_rng(0)
    backend = CythonBackend(1)
    q4_0 = weights(rng, T.Q4_0, (64, 16))
    assert backend.stacked(weights(rng, T.Q4_0, (64, 12))) is None           # 12 rows: not regrouped alone
    assert backend.stacked(q4_0 + weights(rng, T.Q8_0, (16,))) is None      # another type
    assert backend.stacked(q4_0 + weights(rng, T.Q4_0, (16,), n_in=256)) is None  # another input length
    assert backend.stacked(weights(rng, T.Q5_0, (64,)) + weights(rng, T.Q8_0, (16,), n_in=256)) is None
    assert backend.stacked(q4_0[:1]) is None                                # nothing to stack
    x = activations(rng, 3, 512)
    mixed = q4_0 + weights(rng, T.Q8_0, (16,))
    for a, w in zip(backend.matmuls(mixed, x), mixed):
        assert np.array_equal(a, CythonBackend(1).matmul(w, x))


@pytest.mark.parametrize("types", [(T.Q5_0, T.Q5_0, T.Q8_0), (T.Q5_1, T.Q5_1, T.Q8_0), (T.Q4_1, T.Q5_0, T.Q5_1)],
                         ids=lambda ts: "+".join(t.name for t in ts))
def test_mixed_32_weight_stack_bit_identical(types):
    """q, k and v of different 32-weight types (as narrow models' Q4_K_M and Q5_K_M files mix
    them) multiplied as one stack give each one's own product."""
    rng = np.random.default_rng(sum(types))
    ws = tuple(Weight(f"w{i}", t, 512, n_out, random_weights(rng, t, n_out, 512))
               for i, (t, n_out) in enumerate(zip(types, (40, 24, 21))))
    backend = CythonBackend(2)
    assert isinstance(backend.stacked(ws), Blocks32Stack)
    for n in (1, 2, 5, 8, 17, 70):  # one token; tiles of 4 and remainders; past one block of 64 tokens
        x = activations(rng, n, 512)
        for got, w in zip(backend.matmuls(ws, x), ws):
            assert np.array_equal(got, REF.matmul(w, x)), n


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("batch_invariant", [False, True])
@pytest.mark.parametrize("types", [(T.Q4_K, T.Q4_K, T.Q6_K), (T.Q3_K, T.Q5_K, T.Q6_K), (T.Q6_K, T.Q2_K, T.Q4_K)],
                         ids=lambda ts: "+".join(t.name for t in ts))
def test_mixed_k_quant_stack_bit_identical(types, batch_invariant, isa):
    """q, k and v of different K-quant types (Q4_K_M files give some layers a Q6_K attn_v beside
    repacked Q4_K q and k) multiplied as one stack give each one's own product, whichever rounding
    of the activations and kernel each part takes (repacked, tiled, one token at a time)."""
    rng = np.random.default_rng(sum(types))
    ws = tuple(Weight(f"w{i}", t, 512, n_out, random_weights(rng, t, n_out, 512))
               for i, (t, n_out) in enumerate(zip(types, (40, 24, 21))))
    backend = CythonBackend(2, batch_invariant=batch_invariant, isa=isa)
    assert isinstance(backend.stacked(ws), KQuantStack)
    for n in (1, 3, 5, 8, 17, 37):  # one token; few; tiles of 4 and of 16 and remainders
        x = activations(rng, n, 512)
        for got, w in zip(backend.matmuls(ws, x), ws):
            assert np.array_equal(got, CythonBackend(1, batch_invariant=batch_invariant, isa=isa).matmul(w, x)), n


@pytest.mark.parametrize("types", [(T.Q5_0, T.Q8_0, T.Q5_1), (T.Q4_K, T.Q4_K, T.Q6_K), (T.Q6_K, T.Q2_K, T.Q4_K)],
                         ids=lambda ts: "+".join(t.name for t in ts))
def test_stacks_share_one_row_among_threads(types):
    """One row of a stack big enough to share gives each part's own product on any team, each
    thread taking its run of the parts' groups and chunks of rows."""
    rng = np.random.default_rng(sum(types))
    ws = tuple(Weight(f"w{i}", t, 1024, n_out, random_weights(rng, t, n_out, 1024))
               for i, (t, n_out) in enumerate(zip(types, (520, 264, 136))))
    x = activations(rng, 1, 1024)
    got = {}
    for n_threads in (3, 2, 1):  # all before the reference frees any buffer
        backend = CythonBackend(n_threads)
        assert isinstance(backend.stacked(ws), Blocks32Stack if types[0] == T.Q5_0 else KQuantStack)
        got[n_threads] = backend.matmuls(ws, x)
    refs = [REF.matmul(w, x) for w in ws]
    for n_threads, outs in got.items():
        assert all(np.array_equal(out, ref) for out, ref in zip(outs, refs)), n_threads


@pytest.mark.parametrize("types", [(T.Q5_0, T.Q8_0, T.Q5_1), (T.Q4_K, T.Q4_K, T.Q6_K), (T.Q6_K, T.Q2_K, T.Q4_K)],
                         ids=lambda ts: "+".join(t.name for t in ts))
def test_stacks_share_one_row_by_bytes(types):
    """The threads' shares of a one-row product are even in weight bytes, not in tasks, where the
    parts' tasks differ (Q4_K's groups of 8 rows beside Q6_K's chunks of 16, rows of different
    types): no thread streams more than an even split and one task."""
    rng = np.random.default_rng(sum(types))
    ws = tuple(Weight(f"w{i}", t, 1024, n_out, random_weights(rng, t, n_out, 1024))
               for i, (t, n_out) in enumerate(zip(types, (520, 264, 136))))
    stack = CythonBackend(2).stacked(ws)
    total = sum(w.data.nbytes for w in ws)
    largest_task = max(16 * w.data.nbytes // w.n_out for w in ws)
    for n_threads in (2, 3):
        shares = stack.row_shares(n_threads)
        assert sum(shares) == total and max(shares) <= total / n_threads + largest_task, (n_threads, shares)


def test_stacked_matrix_checks_every_part():
    from kernels.matmul import Matrix
    rng = np.random.default_rng(1)
    good, short = random_weights(rng, T.Q4_0, 8, 512), random_weights(rng, T.Q4_0, 8, 256)
    with pytest.raises(ValueError, match="rows hold"):
        Matrix([good, short], int(T.Q4_0), 512)
    with pytest.raises(ValueError, match="C-contiguous"):
        Matrix([good, good[:, ::2]], int(T.Q4_0), 512)
    with pytest.raises(ValueError, match="no weight rows"):
        Matrix([], int(T.Q4_0), 512)


def test_decoder_checks_its_operands(make_model):
    """The compiled decoder (one token through every layer in one call) refuses rows, caches, positions
    and angles that do not fit its model with ValueError, before any kernel runs."""
    from engine import Llama
    from kernels.decoder import Decoder, DecoderLayer

    with Llama(make_model("Q4_0"), n_ctx=16, n_threads=1, backend="cython") as llm:
        hp, decoder, cache = llm.hparams, llm.model.decoder.decoder, llm.cache
        x = np.ones((1, hp.dim), np.float32)
        angles = [tuple(np.zeros((1, hp.head_dim // 2), np.float32) for _ in range(2))]
        good = decoder.decode(x, cache.k, cache.v, 3, angles)
        assert good.shape == (1, hp.dim) and np.all(np.isfinite(good))
        bad = {
            "one row": (np.ones((2, hp.dim), np.float32), cache.k, cache.v, 3, angles),
            "k_cache": (x, cache.k[:, :1], cache.v, 3, angles),
            "v_cache": (x, cache.k, cache.v.astype(np.float32), 3, angles),
            "outside": (x, cache.k, cache.v, 16, angles),
            "cos and sin": (x, cache.k, cache.v, 3, [(angles[0][0][:, :1], angles[0][1])]),
            "angles": (x, cache.k, cache.v, 3, []),
        }
        for match, args in bad.items():
            with pytest.raises(ValueError, match=match):
                decoder.decode(*args)
        wo = llm.model.backend.matrix(llm.model.weights.layers[0].wo)
        norm = np.ones(hp.dim, np.float32)
        with pytest.raises(ValueError, match="window"):
            DecoderLayer([], wo, [], wo, norm, norm, (None,) * 3, None, None, None, None, -1, 0)
        layer = DecoderLayer([(wo, 0)], wo, [(wo, 0)], wo, norm, norm, (None,) * 3, None, None, None, None, 0, 0)
        with pytest.raises(ValueError, match="columns in turn"):
            Decoder([layer], hp.dim, hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.ffn, hp.rms_eps, hp.attn_scale,
                    False, False, None, 0)
