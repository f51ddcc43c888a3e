"""The tokenizer against llama.cpp (its test vectors and the live library) and the sentencepiece library."""
import gguf
import pytest
import sentencepiece
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ModelError, TokenizerError
from engine.gguf import read_gguf
from engine.tokenizer import SPACE, StreamDecoder, Tokenizer, TokenType
from tests.llama_cpp_vocab import LlamaCppVocab, read_vectors

CORPUS = [
    "The quick brown fox jumped over the lazy dog.",
    "Hello, world! It's 3:45pm on 2024-01-02; prices rose 12.5% (from $1,299.99).",
    "  leading spaces", "trailing spaces   ", " one leading space", "\tTabbed\t\tline\t",
    "line one\nline two\n\n\nline five\r\nwindows line", "\n", "\n\n", " ", "   ", "\t \n \t",
    "a  b   c    d     e", "word" + " " * 40 + "word", "\n" * 17, "\t" * 9,
    "Führer Ärger Öl Übermaß straße", "Cửa Việt, Tiếng Việt có dấu",
    "нещо на Български, Привет мир", "Γειά σου Κόσμε", "שלום עולם",
    "مرحبا بالعالم", "नमस्ते दुनिया", "こんにちは世界、カタカナ",
    "我想在apple工作1314151天～", "안녕하세요 세계", "สวัสดีชาวโลก",
    "កាន់តែពិសេសអាចខលចេញ", "ᚠᛇᚻ᛫ᛒᛦᚦ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ∀x∈ℝ: x²≥0",
    "😊", "🦙.cpp", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag",
    "👍🏽👍🏿", "🇫🇷🇯🇵",
    "😶‍🌫️ (emoji ZWJ)",
    "e\u0301 vs é, ﬁ ligature, Ａ fullwidth, \u00a0nbsp, \u200bzero width, \u3000ideographic",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    '{"key": [true, false, null], "nested": {"x": -1.5e-3}}',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "!!!!!! ????? ...... ------ ====== ______ ~~~~~~", "3 33 333 3333 33333 333333333",
    "<s>", "</s>", "<unk>", "<s> text </s>", "a<s>b</s>c", "<0x0A>", "\x00\x01\x7f",
    "\u2581already escaped\u2581\u2581", "",
]

# st.text() leaves out surrogates, which have no UTF-8 form
WORDS = st.lists(st.sampled_from(["the", "Hello", "ing", "in", "ed", " ", "  ", "\t", "\n", "<s>", "</s>",
                                  "<unk>", "😊", "‍", "é", "世界", "12", ",", "'", "▁"]),
                 max_size=20).map("".join)
TEXT = st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=0x7F)), WORDS)


@pytest.fixture(scope="module")
def tok(vocab_path):
    return Tokenizer.from_gguf(vocab_path)


@pytest.fixture(scope="module")
def sp(data_dir):
    return sentencepiece.SentencePieceProcessor(model_file=str(data_dir / "llama2-tokenizer.model"))


@pytest.fixture(scope="module")
def ref(vocab_path):
    return LlamaCppVocab(vocab_path)


def test_llama_cpp_vectors(tok, data_dir):
    for text, ids in read_vectors(data_dir, "llama-spm"):
        assert tok.tokenize(text) == ids, text
        assert tok.untokenize(ids) == text


def test_seed_examples(tok, ref):
    fox = "The quick brown fox jumped over the lazy dog."
    assert len(tok.tokenize(fox)) == len(ref.tokenize(fox)) == 12
    smile = tok.tokenize("😊")
    assert smile == ref.tokenize("😊")
    assert [tok.token_types[i] for i in smile] == [TokenType.NORMAL] + [TokenType.BYTE] * 4
    decoder = StreamDecoder(tok)
    assert [decoder.feed(i) for i in smile] == ["", "", "", "", "😊"]


@pytest.mark.parametrize("text", CORPUS)
def test_corpus_matches_sentencepiece_and_llama_cpp(tok, sp, ref, text):
    assert tok.tokenize(text) == sp.encode(text) == ref.tokenize(text)
    for add_bos in (False, True):
        for special in (False, True):
            assert tok.tokenize(text, add_bos, special) == ref.tokenize(text, add_bos, special)


@given(TEXT)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_text_matches_sentencepiece(tok, sp, text):
    assert tok.tokenize(text) == sp.encode(text)


@given(TEXT, st.booleans(), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_text_matches_llama_cpp(tok, ref, text, add_bos, special):
    assert tok.tokenize(text, add_bos, special) == ref.tokenize(text, add_bos, special)


def test_long_text_matches_sentencepiece(tok, sp):
    text = "\n".join(CORPUS) * 20
    assert tok.tokenize(text) == sp.encode(text)


def test_every_vocab_id_round_trips(tok, ref):
    """llama.cpp's test-tokenizer-1-spm: each token's text tokenizes back to the same text."""
    for token in range(tok.n_vocab):
        text = tok.untokenize([token], special=True)
        assert text == ref.untokenize([token], special=True)
        assert tok.untokenize(tok.tokenize(text, special=True), special=True) == text, token


def test_every_bmp_code_point_round_trips(tok, ref):
    """The other half of test-tokenizer-1-spm, over the Basic Multilingual Plane and a sample beyond."""
    code_points = [cp for cp in range(1, 0x10000) if not 0xD800 <= cp < 0xE000] + list(range(0x10000, 0x110000, 257))
    for cp in code_points:
        text = chr(cp)
        ids = tok.tokenize(text)
        assert ids == ref.tokenize(text), hex(cp)
        assert tok.untokenize(ids) == text.replace(SPACE, " "), hex(cp)


@given(TEXT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_text_round_trips(tok, text):
    # the one loss: a ▁ typed in the text means a space
    assert tok.untokenize(tok.tokenize(text)) == text.replace(SPACE, " ")


def test_token_to_piece_matches_llama_cpp(tok, ref):
    for token in range(tok.n_vocab):
        for special in (False, True):
            assert tok.token_to_piece(token, special) == ref.token_to_piece(token, special), token
        assert tok.pieces[token] == ref.token_to_piece(token, True)


IDS = st.lists(st.integers(0, 31999) | st.sampled_from([0, 1, 2, 13, 29871, 259, 243, 162, 155, 141, 0xFF + 3]),
               max_size=30)


@given(IDS, st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_untokenize_matches_llama_detokenize(tok, ref, ids, special):
    assert tok.untokenize(ids, special) == ref.untokenize(ids, special)


@given(IDS, st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_stream_decoder_agrees_with_untokenize(tok, ids, special):
    decoder = StreamDecoder(tok, special=special)
    chunks = [decoder.feed(token) for token in ids] + [decoder.flush()]
    assert "".join(chunks) == tok.untokenize(ids, special)


def test_stream_decoder_continuing_keeps_the_first_space(tok):
    ids = tok.tokenize("Hello world")[1:]  # "▁world"
    decoder = StreamDecoder(tok, at_start=False)
    assert "".join(decoder.feed(i) for i in ids) + decoder.flush() == " world"


def test_vocabulary_view_matches_sentencepiece(tok, sp, ref):
    assert tok.n_vocab == sp.get_piece_size() == ref.llm.n_vocab()
    assert (tok.bos, tok.eos) == (sp.bos_id(), sp.eos_id()) == (ref.llm.token_bos(), ref.llm.token_eos())

    def sp_piece(i):
        if sp.is_byte(i):
            return bytes([int(sp.id_to_piece(i)[3:5], 16)])
        return sp.id_to_piece(i).replace(SPACE, " ").encode()

    longest = max(range(tok.n_vocab), key=lambda i: len(tok.pieces[i]))
    most_spaces = max(range(tok.n_vocab), key=lambda i: tok.pieces[i].count(b" "))
    assert longest == max(range(sp.get_piece_size()), key=lambda i: len(sp_piece(i)))
    assert most_spaces == max(range(sp.get_piece_size()), key=lambda i: sp_piece(i).count(b" "))
    assert tok.pieces[most_spaces] == b" " * 16


def write_vocab(src, dst, add_bos=True, add_eos=False, add_space_prefix=True, types=None):
    """A copy of the vocab-only GGUF ``src`` with other tokenizer settings, written by the gguf package."""
    metadata = read_gguf(src).metadata
    token_types = metadata["tokenizer.ggml.token_type"].tolist()
    for token, kind in (types or {}).items():
        token_types[token] = int(kind)
    writer = gguf.GGUFWriter(str(dst), "llama")
    for key, value in metadata.items():
        if key.startswith("llama."):
            (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(metadata["tokenizer.ggml.tokens"])
    writer.add_token_scores(metadata["tokenizer.ggml.scores"].tolist())
    writer.add_token_types(token_types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    writer.add_add_space_prefix(add_space_prefix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("settings_", [
    dict(add_bos=False, add_eos=True, add_space_prefix=False),
    dict(add_bos=True, add_eos=True, add_space_prefix=True),
    dict(types={"ing": TokenType.USER_DEFINED, "in": TokenType.USER_DEFINED, "ed": TokenType.CONTROL,
                "▁the": TokenType.USER_DEFINED, "he": TokenType.UNUSED, "er": TokenType.UNDEFINED}),
], ids=["no-prefix-eos", "bos-eos", "token-types"])
def test_metadata_settings_match_llama_cpp(tok, vocab_path, tmp_path, settings_):
    if "types" in settings_:
        settings_["types"] = {tok.tokens.index(text): kind for text, kind in settings_["types"].items()}
    path = write_vocab(vocab_path, tmp_path / "vocab.gguf", **settings_)
    ours, theirs = Tokenizer.from_gguf(path), LlamaCppVocab(path)
    texts = CORPUS + ["singing in the rain", "the theme", "in", "ing", "edinged", "▁the the", "her there"]
    for text in texts:
        for add_bos in (False, True):
            for special in (False, True):
                ids = ours.tokenize(text, add_bos, special)
                assert ids == theirs.tokenize(text, add_bos, special), (text, add_bos, special)
                assert ours.untokenize(ids, special) == theirs.untokenize(ids, special), (text, special)
    for token in range(ours.n_vocab):
        assert ours.pieces[token] == theirs.token_to_piece(token, True)


def test_bad_input(tok):
    with pytest.raises(TypeError, match="str"):
        tok.tokenize(b"bytes")
    with pytest.raises(TypeError):
        tok.tokenize(None)
    with pytest.raises(TokenizerError, match="surrogate U\\+D800 at index 2") as e:
        tok.tokenize("ab\ud800cd")
    assert isinstance(e.value, ValueError)
    for bad in (tok.n_vocab, -1, 10**12):
        with pytest.raises(ValueError, match=str(bad)):
            tok.untokenize([5, bad])
    with pytest.raises(ValueError, match="32000"):
        tok.token_to_piece(32000)
    with pytest.raises(TypeError, match="integers"):
        tok.untokenize([1.5])
    with pytest.raises(TypeError):
        tok.untokenize(["a"])


def test_bad_metadata():
    with pytest.raises(ModelError, match="gpt2"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ModelError, match="tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelError, match="scores"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"],
                                 "tokenizer.ggml.scores": [0.0]})
    with pytest.raises(ModelError, match="duplicate"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "a"]})
    odd_byte = Tokenizer.from_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "<0xZZ>"],
                                        "tokenizer.ggml.token_type": [TokenType.NORMAL, TokenType.BYTE]})
    with pytest.raises(ModelError, match="0xZZ"):
        odd_byte.token_to_piece(1)
