"""BF16 weights against llama.cpp, and the weight types the engine refuses at load.

BF16 is checked bit for bit at every level: the activation rounding and the one-row dot
product against the very functions of llama-cpp-python's libggml (ggml_ref), and whole
models (llama.cpp's own BF16 quantisation of the synthetic model) against llama.cpp's
logits, on both backends.  Types without a matrix product here (Q8_K, Q8_1, the IQ and
TQ families, MXFP4, ...) must stop ``Llama`` at load with a ModelError naming the
tensor and its type.
"""
import gguf
import numpy as np
import pytest

from tests import ggml_ref
import llama_cpp  # the reference: a missing llama_cpp fails this module, it does not skip it
from engine import Llama
from engine.backends import EXACT
from engine.errors import ModelError
from engine.float_dots import float_dots
from engine.quants import BLOCK_LAYOUT, GGMLType
from tests.helpers import reference_isa
from tests.kernel_inputs import bf16_bits
from tests.model_files import quiet_llama_cpp

T = GGMLType
BOS = 1
N_CTX = 64


def widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------- the GGUF type table

def test_type_table_matches_ggml():
    """Every type id ggml knows (its table stops at GGML_TYPE_COUNT; retired ids have block size 0)."""
    for type_ in GGMLType:
        name, block_size, type_size = ggml_ref.type_layout(int(type_))
        assert (type_.name, BLOCK_LAYOUT[type_]) == (name.upper(), (block_size, type_size))
    assert [t for t in range(max(GGMLType) + 1) if t not in set(GGMLType)] == \
        [t for t in range(max(GGMLType) + 1) if ggml_ref.type_layout(t)[1] == 0]


# ---------------------------------------------------------------- BF16 arithmetic against libggml

def test_bf16_rounding_matches_ggml_on_random_bit_patterns():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    bits[:10] = [0x3F808000, 0x3F818000, 0x7F7F7FFF, 0x7F7F8000, 0x7F800000, 0xFF800000,
                 0x7F800001, 0xFFC12345, 0x00008000, 0x80018000]  # ties, overflow, infinities, NaNs, subnormals
    x = bits.view(np.float32)
    np.testing.assert_array_equal(bf16_bits(x), ggml_ref.fp32_to_bf16(x))


@pytest.mark.parametrize("n", [1, 7, 32, 33, 100, 256, 515])
def test_one_row_product_matches_ggml_vec_dot_bf16(n):
    """Tails past the last multiple of 32, values over 2^+-40 (wide sums), and products below the
    smallest normal float, where only a fused multiply-add keeps the bits llama.cpp's build keeps."""
    rng = np.random.default_rng(n)
    for scale in (1.0, 2.0 ** 40, 2.0 ** -70):
        w = bf16_bits(rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n)))
        a = bf16_bits(rng.standard_normal(n) * scale)
        ours = float_dots(widen(a)[None], widen(w)[None], T.BF16, isa=reference_isa())[0, 0]
        assert ours.view(np.uint32) == ggml_ref.vec_dot_bf16(w, a).view(np.uint32), scale


# ---------------------------------------------------------------- whole BF16 models against llama.cpp

@pytest.fixture(scope="module")
def bf16_model(make_model):
    """A BF16 file (every matrix, token_embd and output included, is BF16) and llama.cpp on it."""
    path = make_model("BF16")
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(path), n_ctx=N_CTX, logits_all=True, flash_attn=False, verbose=False, n_threads=1)
    yield path, ref
    ref.close()


def ref_logits(ref, tokens, reset=True):
    """llama.cpp's logits of every position of ``tokens``, evaluated fresh or after what it holds."""
    start = 0 if reset else ref.n_tokens
    if reset:
        ref.reset()
    ref.eval(tokens)
    return np.array(ref.scores[start:start + len(tokens)], np.float32)


@pytest.mark.parametrize("backend", EXACT)
def test_bf16_logits_identical_to_llama_cpp(bf16_model, backend):
    """Two-token prompts and a 40-token prompt (tinyBLAS, several rows), then decoding one token
    at a time (ggml_vec_dot_bf16, one row): every logit the same bits as llama.cpp's."""
    path, ref = bf16_model
    tokens = [BOS] + [int(t) for t in np.random.default_rng(11).integers(3, 32000, 39)]
    with Llama(path, n_ctx=N_CTX, backend=backend, n_threads=2) as ours:
        for token in tokens[1:5]:
            np.testing.assert_array_equal(ours.eval_logits([BOS, token]), ref_logits(ref, [BOS, token]))
        np.testing.assert_array_equal(ours.eval_logits(tokens[:-3]), ref_logits(ref, tokens[:-3]))
        ours.update(tokens[:-3], n_past=0)
        for token in tokens[-3:]:
            ours.update([token])
            np.testing.assert_array_equal(ours.logits, ref_logits(ref, [token], reset=False)[0])


def test_tied_bf16_embedding_identical_to_llama_cpp(make_model):
    """token_embd as BF16 both for the lookup and, tied, as the output matrix, on both backends."""
    path = make_model("BF16", n_layers=1, tied=True)
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(path), n_ctx=N_CTX, logits_all=True, flash_attn=False, verbose=False, n_threads=1)
    prompts = [[BOS, 300], [BOS, 17000, 9]]
    try:
        for backend in EXACT:
            with Llama(path, n_ctx=N_CTX, backend=backend) as ours:
                assert ours.model.weights.output is ours.model.weights.token_embd
                assert ours.model.weights.token_embd.type == T.BF16
                for p in prompts:
                    np.testing.assert_array_equal(ours.eval_logits(p), ref_logits(ref, p), err_msg=backend)
    finally:
        ref.close()


# ---------------------------------------------------------------- types rejected at load

def with_tensor_type(src, dst, name: str, type_: GGMLType):
    """A copy of GGUF file ``src`` at ``dst`` whose tensor ``name`` is random bytes of ``type_``."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        if tensor.name != name:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            continue
        # the raw bytes go in as int8 with their element shape: for uint8 the writer derives the
        # shape from gguf's own type table, whose Q8_1 (40 bytes, an old layout) is not ggml's (36)
        shape = tuple(int(d) for d in reversed(tensor.shape))                    # NumPy order
        block_size, type_size = BLOCK_LAYOUT[type_]
        raw = np.random.default_rng(0).integers(-128, 128, (*shape[:-1], shape[-1] // block_size * type_size), np.int8)
        writer.add_tensor(name, raw, raw_shape=shape, raw_dtype=gguf.GGMLQuantizationType(int(type_)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("name, type_, backend", [
    ("blk.0.attn_q.weight", T.Q8_K, "numpy"),
    ("blk.1.ffn_down.weight", T.Q8_1, "cython"),
    ("blk.0.ffn_gate.weight", T.IQ2_XXS, "numpy"),
    ("output.weight", T.MXFP4, "numpy"),
    ("token_embd.weight", T.IQ4_NL, "cython"),
    ("blk.0.attn_norm.weight", T.Q8_0, "numpy"),
    ("output_norm.weight", T.BF16, "cython"),
], ids=lambda v: v.name if isinstance(v, GGMLType) else v)
def test_unsupported_tensor_types_are_rejected_at_load(make_model, tmp_path, name, type_, backend):
    path = with_tensor_type(make_model("BF16"), tmp_path / "model.gguf", name, type_)  # the smallest file at hand
    with pytest.raises(ModelError, match=rf"'{name}'.*\b{type_.name}\b"):
        Llama(path, n_ctx=N_CTX, backend=backend)
