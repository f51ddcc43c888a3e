"""The shipped tiny Shakespeare model, checked against llama.cpp, gguf-py and sentencepiece.

The file must load in llama.cpp and read identically through gguf-py and our
reader; its SentencePiece model must tokenise as llama.cpp tokenises the GGUF
vocabulary; and llama.cpp must find it far better than a unigram model on the
held-out text, so the weights are trained, not noise.
"""
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import sentencepiece as spm

from engine import Llama
from engine.gguf import read_gguf
from engine.quants import GGMLType
from engine.sampling import greedy
from tests.tiny_shakespeare import (MODEL_PATH, TOKENIZER_PATH, chunks, llama_cpp_nll, next_token_nll,
                                      quantized_model, split_corpus, unigram_nll)

CORPUS = Path(__file__).parent / "data" / "tinyshakespeare.txt"
HYPERPARAMETERS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
                   "attention.head_count", "attention.head_count_kv", "rope.dimension_count",
                   "rope.freq_base", "attention.layer_norm_rms_epsilon", "vocab_size")
TRICKY_TEXTS = [
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "  leading, doubled  and trailing spaces  ",
    "\n\n\ttabs\tand\r\nCRLF\n",
    "Zürich, naïve café — “quotes” 日本語 🎭",
    "digits 1606 and 3.14159, punctuation ?!;:'-",
    "",
]


@pytest.fixture(scope="module")
def llm():
    return llama_cpp.Llama(str(MODEL_PATH), n_ctx=256, logits_all=True, n_threads=2, verbose=False)


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER_PATH))


@pytest.fixture(scope="module")
def corpus():
    return split_corpus(CORPUS.read_text(encoding="utf-8"))


def test_shipped_file_is_small_q8_0_with_f32_norms():
    assert MODEL_PATH.stat().st_size <= 8 * 2**20
    model = read_gguf(MODEL_PATH)
    for name, info in model.tensors.items():
        expected = GGMLType.F32 if name.endswith("norm.weight") else GGMLType.Q8_0
        assert info.type == expected, name


def test_readers_agree_on_metadata_and_tensors(llm):
    ours = read_gguf(MODEL_PATH)
    theirs = gguf.GGUFReader(MODEL_PATH)
    assert set(ours.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        assert np.array_equal(np.asarray(ours.metadata[key]), np.asarray(value)), key
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.dims == tuple(int(d) for d in t.shape), t.name
        assert int(info.type) == int(t.tensor_type), t.name
        assert np.array_equal(ours.tensor(t.name).reshape(-1).view(np.uint8),
                              np.asarray(t.data).reshape(-1).view(np.uint8)), t.name

    # llama.cpp reports scalar metadata as text
    assert ours.metadata["general.architecture"] == llm.metadata["general.architecture"] == "llama"
    for name in HYPERPARAMETERS:
        key = f"llama.{name}"
        assert float(llm.metadata[key]) == pytest.approx(float(ours.metadata[key]), rel=1e-6), key
    assert llm.n_vocab() == len(ours.metadata["tokenizer.ggml.tokens"])
    assert llm.n_embd() == ours.metadata["llama.embedding_length"]
    assert llm.token_bos() == ours.metadata["tokenizer.ggml.bos_token_id"] == 1
    assert llm.token_eos() == ours.metadata["tokenizer.ggml.eos_token_id"] == 2
    assert int(llm.metadata["tokenizer.ggml.unknown_token_id"]) == 0
    assert llm.metadata["tokenizer.ggml.add_bos_token"] == "true"


def test_gguf_vocabulary_is_the_sentencepiece_model(sp):
    meta = read_gguf(MODEL_PATH).metadata
    n = sp.get_piece_size()
    assert meta["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(n)]
    assert np.array_equal(meta["tokenizer.ggml.scores"], np.float32([sp.get_score(i) for i in range(n)]))
    kinds = meta["tokenizer.ggml.token_type"]
    assert [i for i in range(n) if kinds[i] == gguf.TokenType.BYTE] == [i for i in range(n) if sp.is_byte(i)]
    assert kinds[0] == gguf.TokenType.UNKNOWN and sp.is_unknown(0)
    assert list(kinds[1:3]) == [gguf.TokenType.CONTROL] * 2
    assert len([i for i in range(n) if sp.is_byte(i)]) == 256  # every byte is representable


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_tokenisation_matches_sentencepiece(llm, sp, text):
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert ids == sp.encode(text)
    # llama-cpp-python's detokenize keeps the space SentencePiece adds in front of the text
    assert llm.detokenize(ids).decode().removeprefix(" ") == sp.decode(ids) == text


def test_held_out_text_tokenises_identically(llm, sp, corpus):
    _, held_out = corpus
    assert llm.tokenize(held_out.encode(), add_bos=False) == sp.encode(held_out)


def test_llama_cpp_held_out_perplexity_is_far_below_unigram(llm, sp, corpus):
    train, held_out = corpus
    held_ids = llm.tokenize(held_out.encode(), add_bos=False)
    model_nll = llama_cpp_nll(llm, held_ids, n_chunks=4)
    baseline_nll = unigram_nll(sp.encode(train), held_ids, sp.get_piece_size())
    assert model_nll < baseline_nll - 1.0, (np.exp(model_nll), np.exp(baseline_nll))


@pytest.mark.parametrize("ftype, weight_type", [("Q4_0", GGMLType.Q4_0), ("Q4_K_M", GGMLType.Q4_K)])
def test_quantised_versions_load_in_llama_cpp(tmp_path, ftype, weight_type):
    path = quantized_model(ftype, tmp_path)
    assert read_gguf(path).tensors["blk.0.attn_q.weight"].type == weight_type
    small = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False)
    out = small("ROMEO:", max_tokens=8, temperature=0.0)
    assert out["choices"][0]["text"]


def test_our_held_out_perplexity_matches_llama_cpp(llm, corpus):
    _, held_out = corpus
    held_ids = llm.tokenize(held_out.encode(), add_bos=False)
    with Llama(MODEL_PATH, n_ctx=256) as ours:
        our_nll = np.concatenate([next_token_nll(ours.eval_logits(window), window)
                                  for window in chunks(held_ids, 256, n_chunks=4)]).mean()
    assert np.exp(our_nll) == pytest.approx(np.exp(llama_cpp_nll(llm, held_ids, n_chunks=4)), rel=0.01)


GREEDY_PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore we proceed", "KING RICHARD II:\nO, that I were", "To be"]


@pytest.mark.parametrize("qtype", [None, "Q8_0", "Q4_0", "Q4_K_M"])
def test_greedy_continuations_match_llama_cpp(tmp_path_factory, qtype):
    """A trained model's peaked logits make 64-token greedy identity a fair test on quantised
    files; both backends must keep llama.cpp's tokens."""
    path = MODEL_PATH if qtype is None else quantized_model(qtype, tmp_path_factory.mktemp("tiny"))
    ref = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    with Llama(path, n_ctx=128, backend="numpy") as reference, Llama(path, n_ctx=128, backend="cython") as compiled:
        for prompt in GREEDY_PROMPTS:
            tokens = reference.tokenize(prompt, add_bos=True)
            assert tokens == ref.tokenize(prompt.encode(), add_bos=True)
            ref.reset()
            ref.eval(tokens)
            expected = []
            while len(expected) < 64:
                token = int(np.argmax(ref.scores[ref.n_tokens - 1]))
                if token == ref.token_eos():
                    break
                expected.append(token)
                ref.eval([token])
            for ours in (reference, compiled):
                generated = list(ours.generate_tokens(tokens, sampler=greedy, max_tokens=64))
                assert generated == expected, (prompt, ours.model.backend.name)
