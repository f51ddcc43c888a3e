"""Model families other than LLaMA against llama.cpp (llama-cpp-python 0.3.36) on the same ids.

Synthetic Gemma 3, Qwen2, Qwen3 and Phi-3 models (seeded weights written with gguf's writer,
quantised by llama.cpp itself) with GQA; Gemma 3 and Qwen3 with a head size apart from
dim / heads (attention.key_length), Gemma 3 with a 64-token sliding window on all but every
sixth layer, Qwen2 with q, k and v biases, Phi-3 with q, k, v fused in attn_qkv and gate and up
in ffn_up: logits of every position bit-identical to
llama.cpp's for 2 and 40 tokens on F32, F16, Q8_0, Q4_0, Q4_K_M and Q6_K files, and for a
700-token Gemma 3 prompt, where the window matters.  The real Gemma 3 270M (fetched by the pinned
download ``llamanp pull`` uses): a 600-token prompt, longer than its 512-token window, and 128
greedy tokens.  Both engines run one thread, as in test_smollm2.
"""
import ctypes
from pathlib import Path

import llama_cpp  # the reference: a missing llama_cpp fails this module, it does not skip it
import numpy as np
import pytest

from engine import Llama
from engine.errors import ModelError
from engine.ggml_math import gelu_table
from engine.gguf import read_gguf
from engine.model import FAMILIES, HParams
from engine.tokenizer import Tokenizer
from tests.helpers import llama_cpp_logits, random_tokens
from tests.llama_cpp_vocab import LlamaCppVocab
from tests.model_files import FAMILY_SPECS as SPECS, GEMMA3, quiet_llama_cpp, with_metadata

N_CTX = 1024
FILES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"]


def family_file(make_model, arch: str, kind: str) -> Path:
    if kind in ("F32", "F16"):
        return make_model(**SPECS[arch], ftype=kind.lower())
    return make_model(kind, **SPECS[arch])


@pytest.mark.parametrize("arch", SPECS)
@pytest.mark.parametrize("kind", FILES)
def test_logits_equal_llama_cpp(make_model, arch, kind):
    path = family_file(make_model, arch, kind)
    with Llama(path, n_ctx=N_CTX, n_threads=1, backend="cython") as ours:
        for n in (2, 40):
            tokens = random_tokens(0, n)
            assert np.array_equal(ours.eval_logits(tokens), llama_cpp_logits(path, tokens, N_CTX)), n


@pytest.mark.parametrize("arch", SPECS)
@pytest.mark.parametrize("kind", ["F16", "Q4_0", "Q4_K_M"])
def test_decoding_equals_llama_cpp(make_model, arch, kind):
    """One token at a time (the compiled decoder: every layer in one call), llama.cpp decoding the
    same tokens one at a time: the logits of every step equal, on two threads and on three (whose
    shares of the kv heads and of the products fall unevenly).  The prompt is 66 tokens, so the
    decoded positions lie past Gemma 3's 64-token window."""
    path = family_file(make_model, arch, kind)
    tokens = random_tokens(1, 70)
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        ref.eval(tokens[:66])
        for i in range(66, 70):
            ref.eval([tokens[i]])
        expected = np.array(ref.scores[66:70], dtype=np.float32)
    finally:
        ref.close()
    for n_threads in (2, 3):
        with Llama(path, n_ctx=128, n_threads=n_threads, backend="cython") as ours:
            assert ours.model.decoder is not None
            ours.update(tokens[:66], n_past=0)
            for i in range(66, 70):
                ours.update([tokens[i]])
                assert np.array_equal(ours.logits, expected[i - 66]), (n_threads, i)


@pytest.mark.parametrize("arch", SPECS)
def test_numpy_reference_equals_llama_cpp(make_model, arch):
    path = family_file(make_model, arch, "Q4_K_M")
    tokens = random_tokens(0, 40)
    with Llama(path, n_ctx=64, backend="numpy") as reference:
        assert np.array_equal(reference.eval_logits(tokens), llama_cpp_logits(path, tokens, N_CTX))


def test_gemma3_prompt_past_the_window_equals_llama_cpp(make_model):
    path = family_file(make_model, "gemma3", "F32")
    tokens = random_tokens(0, 700)
    with Llama(path, n_ctx=N_CTX, n_threads=1, backend="cython") as ours:
        assert np.array_equal(ours.eval_logits(tokens), llama_cpp_logits(path, tokens, N_CTX))


def test_gelu_table_is_ggml_s():
    """Our GELU table against the one ggml's CPU backend fills at start (ggml_table_gelu_f16), every finite input."""
    lib = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
    cpu = ctypes.CDLL(str(lib))
    cpu.ggml_cpu_init()
    theirs = np.ctypeslib.as_array((ctypes.c_uint16 * (1 << 16)).in_dll(cpu, "ggml_table_gelu_f16")).copy()
    finite = np.isfinite(np.arange(1 << 16, dtype=np.uint16).view(np.float16))
    assert np.array_equal(gelu_table().view(np.uint16)[finite], theirs[finite])


def test_gemma3_270m_equals_llama_cpp(gemma3_270m, data_dir):
    """A 600-token prompt (past the 512-token window) and 128 greedy tokens, logits equal at every step."""
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(gemma3_270m), n_ctx=N_CTX, logits_all=True, n_threads=1, n_threads_batch=1,
                          verbose=False)
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:8000]
    prompt = ref.tokenize(text.encode(), add_bos=True, special=False)[:600]
    assert len(prompt) == 600
    try:
        with Llama(gemma3_270m, n_ctx=N_CTX, n_threads=1, backend="cython") as ours:
            ref.eval(prompt)
            assert np.array_equal(ours.eval_logits(prompt), np.array(ref.scores[:600], dtype=np.float32))
            ours.update(prompt, n_past=0)
            mine, theirs = [], []
            for step in range(128):
                ref_last = np.array(ref.scores[ref.n_tokens - 1], dtype=np.float32)
                assert np.array_equal(ours.logits, ref_last), step
                mine.append(int(np.argmax(ours.logits)))
                theirs.append(int(np.argmax(ref_last)))
                ours.update([mine[-1]])
                ref.eval([theirs[-1]])
            assert mine == theirs
            assert len(set(mine)) > 10  # text, not one token repeated
    finally:
        ref.close()


def test_gemma3_270m_ends_turns_as_llama_cpp(gemma3_270m):
    """The end-of-generation ids are llama.cpp's (<end_of_turn> among them), and with no template in
    the file a chat takes Gemma's turn format, which stops at <end_of_turn>."""
    from engine.chat import chat_format

    ref = LlamaCppVocab(gemma3_270m)
    with Llama(gemma3_270m, n_ctx=16) as ours:
        tok = ours.tokenizer
        assert tok.eog == {t for t in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(ref.vocab, t)}
        assert tok.ids["<end_of_turn>"] in tok.eog
        fmt = chat_format(ours.metadata, tok)
        assert fmt.name == "gemma" and fmt.stop == ("<end_of_turn>",)


def test_gemma3_270m_hyperparameters(gemma3_270m):
    """What llama.cpp derives for the real file: 256-wide heads, 5 of 6 layers windowed with base 10,000."""
    hp = HParams.from_gguf(read_gguf(gemma3_270m))
    assert hp.family == FAMILIES["gemma3"] and hp.head_dim == 256 and hp.n_kv_heads == 1
    assert hp.windows == tuple(0 if i % 6 == 5 else 512 for i in range(18))
    assert (hp.rope.freq_base, hp.rope_swa.freq_base, hp.rope.neox) == (1e6, 10000.0, True)
    assert hp.attn_scale == np.float32(1 / 16)


@pytest.mark.parametrize("drop, extra, message", [
    (("blk.0.attn_q_norm.weight",), {}, "attn_q_norm.weight' is missing"),
    (("blk.1.post_ffw_norm.weight",), {}, "post_ffw_norm.weight' is missing"),
    ((), {"gemma3.attention.head_count_kv": 3}, "must split into head_count_kv"),
    ((), {"gemma3.final_logit_softcapping": 30.0}, "final_logit_softcapping is not supported"),
    ((), {"gemma3.attention.sliding_window_pattern": [True, False]}, "sliding_window_pattern must be UINT32"),
    ((), {"gemma3.attention.value_length": 32}, "value_length must equal"),
])
def test_unsupported_gemma3_variants_are_refused(make_model, tmp_path, drop, extra, message):
    path = with_metadata(make_model(**GEMMA3), tmp_path / "variant.gguf", extra, drop)
    with pytest.raises(ModelError, match=message):
        Llama(path, n_ctx=64)


def test_phi3_window_is_ignored_as_llama_cpp_ignores_it(make_model, tmp_path):
    """Phi-3 files carry attention.sliding_window; llama.cpp disables it, and so must we."""
    path = with_metadata(make_model(**SPECS["phi3"]), tmp_path / "window.gguf", {"phi3.attention.sliding_window": 8})
    tokens = random_tokens(0, 40)
    with Llama(path, n_ctx=N_CTX, n_threads=1, backend="cython") as ours:
        assert np.array_equal(ours.eval_logits(tokens), llama_cpp_logits(path, tokens, N_CTX))


def test_phi3_vocabulary_ends_turns_as_llama_cpp(llama_cpp_vocabs):
    """Phi-3's own vocabulary (llama.cpp's ggml-vocab-phi-3.gguf): the end-of-generation ids are
    llama.cpp's, <|end|>, which closes each turn of its chat template, among them."""
    path = llama_cpp_vocabs / "ggml-vocab-phi-3.gguf"
    tok, ref = Tokenizer.from_gguf(path), LlamaCppVocab(path)
    assert tok.eog == {t for t in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(ref.vocab, t)}
    assert tok.ids["<|end|>"] in tok.eog


@pytest.mark.parametrize("tensor, message", [
    ("rope_factors_long.weight", "'rope_factors_long.weight' is not supported"),   # Phi-3 128k's longrope
    ("rope_factors_short.weight", "'rope_factors_short.weight' is not supported"),
    ("blk.0.attn_qkv.bias", "'blk.0.attn_qkv.bias' is not supported"),
])
def test_unsupported_phi3_variants_are_refused(make_model, tmp_path, tensor, message):
    sizes = {"blk.0.attn_qkv.bias": 128 + 2 * 64}
    data = np.ones(sizes.get(tensor, 32 // 2), np.float32)                # rope factors: (head size / 2,)
    path = with_metadata(make_model(**SPECS["phi3"]), tmp_path / "variant.gguf", {}, tensors={tensor: data})
    with pytest.raises(ModelError, match=message):
        Llama(path, n_ctx=64)


def test_fused_blocks_llama_cpp_repacks_otherwise_are_refused(make_model):
    """A Q4_0 attn_qkv of 136 rows, which llama.cpp repacks whole, holding k and v blocks of 4 rows,
    which our kernels would not repack: refused rather than summed in another order."""
    path = make_model("Q4_0", arch="phi3", dim=128, n_layers=1, n_heads=32, n_kv_heads=1, ffn=256, n_ctx=64)
    assert read_gguf(path).tensors["blk.0.attn_qkv.weight"].type.name == "Q4_0"
    with pytest.raises(ModelError, match="not all multiples of 8"):
        Llama(path, n_ctx=64)
