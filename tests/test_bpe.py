"""Byte-level BPE vocabularies (and every llama.cpp test vocabulary) against llama.cpp 0.3.36.

The vocabularies and their test vectors are llama.cpp's own (models/ggml-vocab-*),
from the pinned llama-cpp-python sdist (see the ``llama_cpp_vocabs`` fixture); the
live reference is llama.cpp through llama_cpp.
"""
import random

import gguf
import llama_cpp
import numpy as np
import pytest

from engine.errors import ModelError
from engine.gguf import read_gguf
from engine.tokenizer import StreamDecoder, Tokenizer, TokenType
from tests.llama_cpp_vocab import LlamaCppVocab, read_vectors

BPE_VOCABS = ["llama-bpe", "qwen2", "qwen35", "gpt-2", "deepseek-llm", "deepseek-coder", "falcon", "starcoder",
              "refact", "mpt", "command-r"]
N_TEXTS = 2000

HIDDEN = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
SPECIAL = HIDDEN | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


@pytest.fixture(scope="module")
def vocab(llama_cpp_vocabs):
    """``vocab(name)`` -> (ours, llama.cpp's), each built once per module."""
    built = {}

    def get(name: str) -> tuple[Tokenizer, LlamaCppVocab]:
        if name not in built:
            path = llama_cpp_vocabs / f"ggml-vocab-{name}.gguf"
            built[name] = Tokenizer.from_gguf(path), LlamaCppVocab(path)
        return built[name]
    return get


@pytest.mark.parametrize("name", BPE_VOCABS + ["phi-3"])
def test_llama_cpp_vectors(llama_cpp_vocabs, vocab, name):
    tok, _ = vocab(name)
    for text, ids in read_vectors(llama_cpp_vocabs, name):
        assert tok.tokenize(text) == ids, text


SCRIPTS = ["Hello", "world", "ÀÉÎõü", "straße", "Привет", "мир", "Γειά", "σου",
           "שלום", "مرحبا", "नमस्ते", "สวัสดี", "こんにちは", "カタカナ",
           "我想在apple工作", "안녕하세요",
           "ᚠᛇᚻ", "𝔘𝔫𝔦", "ǅungla", "İstanbul",
           "e\u0301", "a\u0308\u0323", "\u0897x", "\U0001E030", "\u2ffc", "\U000323b0", "\ufdd0", "\U0010ffff",
           "\ue000", "\U000e0001", "ﬁ", "Ａｂｃ", "ⅷ", "µ", "Ω", "K",
           # Llama 3 tokens its merges do not rebuild
           "việc", "nhiều", "jeho", "mektedir", "değiş", "використ"]
EMOJI = ["😊", "🦙", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "😶‍🌫️",
         "🇫🇷🇯🇵", "❤️", "\u200d", "\ufe0f"]
DIGITS = ["1", "12", "123", "1234", "12345", "3.14159", "1,000,000", "٣٤٥", "３４", "²³", "①", "〇", "0x1F"]
CONTRACTIONS = ["'s", "'S", "'t", "'T", "'re", "'RE", "'rE", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL", "'d",
                "'D", "'", "''", "'x", "’s", "ſ", "'ſ"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\x0b", "\x0c", "\x1c", "\x85", "\u00a0",
          "\u1680", "\u2009", "\u200b", "\u2028", "\u3000", "\u180e", "    \n", "\t\t "]
CODE = ["def f(x):", "return {'a': [1, 2]}", "int main(void) {", "printf(\"%d\\n\", 42);", "<html>", "&amp;",
        "a+=b", "x->y", "!!", "??", "...", "---", "$$", "^_^", "`code`", "|~|", "@user", "#tag", "(", ")", "[", "]",
        "“quoted”", "—", "…", "。", "、", "！", "：", "‘", "‟"]


def random_texts(tok: Tokenizer, n: int, seed: int) -> list[str]:
    """``n`` seeded strings mixing scripts, emoji, digits, contractions, white space, code and special tokens."""
    rng = random.Random(seed)
    specials = [tok.tokens[i] for i in tok.special_tokens] or ["<|x|>"]
    kinds = [SCRIPTS, EMOJI, DIGITS, CONTRACTIONS, SPACES, CODE, specials]
    texts = []
    for _ in range(n):
        if rng.random() < 0.1:  # any code points at all, surrogates aside
            code_points = [rng.choice([rng.randrange(0x80), rng.randrange(0x3000), rng.randrange(0x110000)])
                           for _ in range(rng.randrange(1, 12))]
            texts.append("".join(chr(c) for c in code_points if not 0xD800 <= c < 0xE000))
            continue
        parts = []
        for _ in range(rng.randrange(1, 14)):
            part = rng.choice(rng.choice(kinds))
            parts.append(part.upper() if rng.random() < 0.1 else part)
            if rng.random() < 0.4:
                parts.append(rng.choice(SPACES[:3]))
        texts.append("".join(parts))
    return texts


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_random_text_matches_llama_cpp(vocab, name):
    tok, ref = vocab(name)
    for text in random_texts(tok, N_TEXTS, seed=BPE_VOCABS.index(name)):
        for special in (False, True):
            ids = tok.tokenize(text, special=special)
            assert ids == ref.tokenize(text, special=special), (text, special)
            assert tok.untokenize(ids, special) == ref.pieces_text(ids, special), (text, special)


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_vocabulary_matches_llama_cpp(vocab, name):
    """Every id's piece, type and end-of-generation flag; and llama.cpp's test-tokenizer-1-bpe
    round trip (a token's text tokenizes back to that text) on a seeded sample of 2,000 tokens."""
    tok, ref = vocab(name)
    assert tok.n_vocab == ref.llm.n_vocab()
    assert (tok.bos, tok.eos, tok.add_bos, tok.add_eos) == (ref.llm.token_bos(), ref.llm.token_eos(),
                                                           llama_cpp.llama_vocab_get_add_bos(ref.vocab),
                                                           llama_cpp.llama_vocab_get_add_eos(ref.vocab))
    attrs = [llama_cpp.llama_vocab_get_attr(ref.vocab, t) for t in range(tok.n_vocab)]
    assert [tok.token_types[t] in (TokenType.CONTROL, TokenType.UNKNOWN) for t in range(tok.n_vocab)] == \
        [bool(a & HIDDEN) for a in attrs]
    assert [t in tok.special_tokens for t in range(tok.n_vocab)] == [bool(a & SPECIAL) for a in attrs]
    assert tok.eog == {t for t in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(ref.vocab, t)}
    for token in range(tok.n_vocab):
        assert tok.pieces[token] == tok.token_to_piece(token, special=True) == ref.token_to_piece(token, True), token
        assert tok.token_to_piece(token) == ref.token_to_piece(token, False), token
    normal = [t for t in range(tok.n_vocab) if tok.token_types[t] == TokenType.NORMAL]
    for token in random.Random(name).sample(normal, 2000):
        text = tok.pieces[token].decode("utf-8", errors="replace")
        ids = tok.tokenize(text)
        assert ids == ref.tokenize(text), token
        assert tok.untokenize(ids) == text, token


def test_seed_examples(vocab):
    tok, ref = vocab("llama-bpe")
    text = "Hello world! It's 2024 — 12345 ducks\n\n  🦙"
    assert tok.tokenize(text) == ref.tokenize(text)
    assert tok.tokenize(text, add_bos=True) == ref.tokenize(text, add_bos=True)  # Llama 3 adds BOS
    eot = tok.ids["<|eot_id|>"]
    assert tok.tokenize("<|eot_id|>", special=True) == ref.tokenize("<|eot_id|>", special=True) == [eot]
    assert tok.tokenize("<|eot_id|>") == ref.tokenize("<|eot_id|>") != [eot]
    assert tok.untokenize(tok.tokenize(text)) == text
    decoder = StreamDecoder(tok)
    llama = tok.tokenize("🦙")
    assert len(llama) > 1 and [decoder.feed(t) for t in llama][-1] == "🦙"
    assert {eot, tok.eos} <= tok.eog


def write_vocab(src, dst, pre: str, bos: bool = True, add: bool | None = None):
    """A copy of the vocab-only GGUF ``src`` with another tokenizer.ggml.pre, without
    tokenizer.ggml.bos_token_id unless ``bos``, and add_bos_token = add_eos_token = ``add``
    unless None (absent); written by the gguf package."""
    metadata = read_gguf(src).metadata
    arch = metadata["general.architecture"]
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, value in metadata.items():
        if key.startswith(arch + "."):
            {float: writer.add_float32, str: writer.add_string}.get(type(value), writer.add_uint32)(key, value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(metadata["tokenizer.ggml.tokens"])
    writer.add_token_types(metadata["tokenizer.ggml.token_type"].tolist())
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    if bos:
        writer.add_bos_token_id(metadata["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(metadata["tokenizer.ggml.eos_token_id"])
    if add is not None:
        writer.add_add_bos_token(add)
        writer.add_add_eos_token(add)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("name, pre, bos, add", [
    ("starcoder", "smollm", True, None),   # SmolLM2's, on the StarCoder vocabulary it shares
    ("qwen2", "grok-2", True, None),       # Qwen2's split under another name
    ("llama-bpe", "glm4", False, None),    # Llama 3's split, whole words first, no BOS by default
    ("llama-bpe", "dbrx", True, None),     # Llama 3's split, merges always, no BOS added
    ("llama-bpe", "llama-bpe", True, False),  # the GGUF's add_bos_token overrides Llama 3's default
    ("gpt-2", "", True, True),             # empty: llama.cpp's default split; BOS and EOS added as the GGUF says
])
def test_other_pre_tokenizers_match_llama_cpp(llama_cpp_vocabs, tmp_path, name, pre, bos, add):
    path = write_vocab(llama_cpp_vocabs / f"ggml-vocab-{name}.gguf", tmp_path / "vocab.gguf", pre, bos, add)
    tok, ref = Tokenizer.from_gguf(path), LlamaCppVocab(path)
    assert (-1 if tok.bos is None else tok.bos, tok.add_bos, tok.add_eos) == (
        ref.llm.token_bos(), llama_cpp.llama_vocab_get_add_bos(ref.vocab), llama_cpp.llama_vocab_get_add_eos(ref.vocab))
    for i, text in enumerate(random_texts(tok, 300, seed=99)):
        assert tok.tokenize(text, add_bos=i % 2 == 0, special=True) == \
            ref.tokenize(text, add_bos=i % 2 == 0, special=True), text


GPT2 = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.merges": ["a b"]}
SPM = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b", "ab"]}


@pytest.mark.parametrize("base, key, value, message", [
    (GPT2, "tokenizer.ggml.model", 5, "tokenizer.ggml.model"),
    (GPT2, "tokenizer.ggml.model", "bert", "bert"),
    (GPT2, "tokenizer.ggml.pre", "klingon", "klingon"),
    (GPT2, "tokenizer.ggml.pre", ["gpt-2"], "tokenizer.ggml.pre"),
    (GPT2, "tokenizer.ggml.tokens", "abc", "tokenizer.ggml.tokens"),
    (GPT2, "tokenizer.ggml.tokens", ["a", 1], "tokenizer.ggml.tokens"),
    (GPT2, "tokenizer.ggml.merges", None, "tokenizer.ggml.merges"),
    (GPT2, "tokenizer.ggml.merges", "a b", "tokenizer.ggml.merges"),
    (GPT2, "tokenizer.ggml.merges", [["a", "b"]], "tokenizer.ggml.merges"),
    (GPT2, "tokenizer.ggml.merges", ["ab"], "tokenizer.ggml.merges"),
    (GPT2, "tokenizer.ggml.merges", [""], "tokenizer.ggml.merges"),
    (GPT2, "tokenizer.ggml.eot_token_id", [1, 2], "tokenizer.ggml.eot_token_id"),
    (GPT2, "tokenizer.ggml.bos_token_id", "1", "tokenizer.ggml.bos_token_id"),
    (GPT2, "tokenizer.ggml.eos_token_id", True, "tokenizer.ggml.eos_token_id"),
    (GPT2, "tokenizer.ggml.eos_token_id", 1.0, "tokenizer.ggml.eos_token_id"),
    (GPT2, "tokenizer.ggml.add_bos_token", "yes", "tokenizer.ggml.add_bos_token"),
    (GPT2, "tokenizer.ggml.add_eos_token", 1, "tokenizer.ggml.add_eos_token"),
    (GPT2, "tokenizer.ggml.token_type", [1, 1.5, 1], "tokenizer.ggml.token_type"),
    (GPT2, "tokenizer.ggml.token_type", ["1", "1", "1"], "tokenizer.ggml.token_type"),
    (GPT2, "tokenizer.ggml.token_type", 1, "tokenizer.ggml.token_type"),
    (GPT2, "tokenizer.ggml.token_type", np.ones((3, 1), np.int32), "tokenizer.ggml.token_type"),
    (GPT2, "general.name", 7, "general.name"),
    (SPM, "tokenizer.ggml.scores", "0.0", "tokenizer.ggml.scores"),
    (SPM, "tokenizer.ggml.scores", [[0.0], [1.0, 2.0], [3.0]], "tokenizer.ggml.scores"),
    (SPM, "tokenizer.ggml.scores", ["1", "2", "3"], "tokenizer.ggml.scores"),
    (SPM, "tokenizer.ggml.scores", [0.0, 10**400, 1.0], "tokenizer.ggml.scores"),
    (SPM, "tokenizer.ggml.scores", np.array(["x", "y", "z"]), "tokenizer.ggml.scores"),
    (SPM, "tokenizer.ggml.add_space_prefix", [True], "tokenizer.ggml.add_space_prefix"),
])
def test_malformed_metadata_raises_model_error(base, key, value, message):
    metadata = {**base, key: value} if value is not None else {k: v for k, v in base.items() if k != key}
    with pytest.raises(ModelError, match=message.replace(".", r"\.")):
        Tokenizer.from_metadata(metadata)
