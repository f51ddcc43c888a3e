"""The Llama API: evaluation bookkeeping, text input, rewinding, state, lifetime, and bad input."""
import gguf
import numpy as np
import pytest

import llama_cpp
from engine import ContextOverflowError, Llama, LlamaError, LlamaState, ModelError
from engine.backends import EXACT
from tests.model_files import quiet_llama_cpp, write_tiny

BOS = 1


@pytest.fixture(scope="module")
def model_path(make_model):
    return make_model("Q4_0")


@pytest.fixture
def llm(model_path):
    with Llama(model_path, n_ctx=64, backend="numpy") as llm:
        yield llm


@pytest.fixture(scope="module")
def reference(model_path):
    """llama.cpp on the same file, for its tokenizer and special ids."""
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(model_path), n_ctx=64, verbose=False, n_threads=1)
    yield ref
    ref.close()


def test_update_appends_and_exposes_last_logits(llm):
    assert llm.n_past == 0
    llm.update([BOS, 100, 200])
    assert llm.n_past == 3 and llm.n_evaluated == 3
    assert llm.logits.shape == (llm.n_vocab,) and llm.logits.dtype == np.float32
    llm.update([300])
    assert llm.n_past == 4 and llm.n_evaluated == 4
    appended = llm.logits.copy()
    assert llm.eval_logits([BOS, 100, 200, 300]).shape == (4, llm.n_vocab)
    assert llm.n_past == 4 and llm.n_evaluated == 8
    llm.get_logits([BOS, 100, 200])
    llm.update([300])
    np.testing.assert_array_equal(llm.logits, appended)


def test_get_logits_is_a_fresh_evaluation(llm):
    llm.update([BOS, 5, 6, 7, 8])
    logits = llm.get_logits([BOS, 100])
    assert llm.n_past == 2
    np.testing.assert_array_equal(logits, llm.eval_logits([BOS, 100])[-1])


def test_logits_before_any_update_raise(llm):
    with pytest.raises(LlamaError, match="update"):
        llm.logits


def test_text_gets_bos_only_at_the_start(llm, reference):
    expected = reference.tokenize(b"Hello world", add_bos=True)
    llm.update("Hello world")
    assert llm.n_past == len(expected) and expected[0] == BOS
    np.testing.assert_array_equal(llm.logits, llm.eval_logits(expected)[-1])
    llm.update("Hello world")
    more = reference.tokenize(b"Hello world", add_bos=False)
    assert llm.n_past == len(expected) + len(more)
    appended = llm.logits.copy()
    llm.get_logits(expected)
    llm.update(more)
    np.testing.assert_array_equal(appended, llm.logits)


def test_vocabulary_passthroughs_agree_with_llama_cpp(llm, reference):
    assert llm.n_vocab == reference.n_vocab()
    assert llm.bos == reference.token_bos() and llm.eos == reference.token_eos()
    text = "The quick brown fox"
    tokens = llm.tokenize(text)
    assert tokens == reference.tokenize(text.encode(), add_bos=True)
    assert llm.untokenize(tokens).strip() == text
    assert llm.metadata["general.architecture"] == "llama"


def test_rewind_keeps_the_prefix(llm):
    llm.update([BOS, 10, 11, 12, 13, 14])
    llm.update([20, 21], n_past=3)
    assert llm.n_past == 5
    rewound = llm.logits.copy()
    llm.get_logits([BOS, 10, 11])
    llm.update([20, 21])
    np.testing.assert_array_equal(rewound, llm.logits)


def test_save_and_load_state_restore_cache_and_logits(llm):
    llm.update([BOS, 30, 31, 32])
    state = llm.save_state()
    saved = llm.logits.copy()
    llm.update([40, 41, 42, 43], n_past=1)
    llm.load_state(state)
    assert llm.n_past == 4
    np.testing.assert_array_equal(llm.logits, saved)
    llm.update([33])
    restored = llm.logits.copy()
    llm.get_logits([BOS, 30, 31, 32])
    llm.update([33])
    np.testing.assert_array_equal(restored, llm.logits)


def test_state_from_another_shape_is_rejected(llm, make_model):
    with Llama(make_model("Q4_0", n_kv_heads=2), n_ctx=64, backend="numpy") as other:
        other.update([BOS, 1000])
        state = other.save_state()
    with pytest.raises(ValueError, match="cache shape"):
        llm.load_state(state)
    with pytest.raises(TypeError):
        llm.load_state({"n_past": 0})
    assert isinstance(state, LlamaState)


def test_weights_are_used_in_place_from_the_file(llm):
    for w in (llm.model.weights.output, llm.model.weights.layers[0].wq, llm.model.weights.token_embd):
        assert not w.data.flags.owndata and not w.data.flags.writeable


def test_close_and_context_manager(model_path):
    with Llama(model_path, n_ctx=16, backend="numpy") as llm:
        llm.update([BOS])
    with pytest.raises(LlamaError, match="closed"):
        llm.update([BOS])


def test_backend_choice(model_path):
    with Llama(model_path, n_ctx=8, backend="auto") as llm:
        assert llm.model.backend.name in EXACT
    with pytest.raises(ValueError, match="backend"):
        Llama(model_path, backend="gpu")


# -- bad input

def test_context_overflow_leaves_the_cache_unchanged(model_path):
    with Llama(model_path, n_ctx=8, backend="numpy") as llm:
        llm.update([BOS, 1, 2, 3, 4])
        before = llm.logits.copy()
        with pytest.raises(ContextOverflowError, match="n_ctx=8"):
            llm.update([5, 6, 7, 8])
        assert llm.n_past == 5 and llm.n_evaluated == 5
        np.testing.assert_array_equal(llm.logits, before)
        with pytest.raises(ContextOverflowError, match="n_ctx=8"):
            llm.eval_logits(list(range(9)))
        llm.update([5, 6, 7])
        assert llm.n_past == 8


@pytest.mark.parametrize("tokens", [[BOS, 32000], [-1], [BOS, 2**40]])
def test_out_of_range_tokens_are_rejected(llm, tokens):
    with pytest.raises(ValueError, match="out of range"):
        llm.update(tokens)
    assert llm.n_past == 0 and llm.n_evaluated == 0


@pytest.mark.parametrize("tokens", [[1.5], ["a"], [True], b"abc"])
def test_non_integer_tokens_are_rejected(llm, tokens):
    with pytest.raises(TypeError):
        llm.update(tokens)


@pytest.mark.parametrize("n_past", [-1, 3, 1.0])
def test_bad_n_past_is_rejected(llm, n_past):
    llm.update([BOS, 2])
    with pytest.raises(ValueError, match="n_past"):
        llm.update([5], n_past=n_past)
    assert llm.n_past == 2


@pytest.mark.parametrize("n_ctx", [0, -5, 2.5, True, 10**15])
def test_bad_n_ctx_is_rejected(model_path, n_ctx):
    with pytest.raises(ValueError, match="n_ctx"):
        Llama(model_path, n_ctx=n_ctx)


def test_empty_eval_is_rejected(llm):
    with pytest.raises(ValueError):
        llm.eval_logits([])


def test_tiny_model_runs(tmp_path):
    with Llama(write_tiny(tmp_path / "ok.gguf"), backend="numpy") as llm:
        assert llm.n_ctx == 32 and llm.n_vocab == 64
        assert llm.eval_logits([1, 2, 3]).shape == (3, 64)


def test_unsupported_architecture(tmp_path):
    with pytest.raises(ModelError, match="gpt2.*supported: llama"):
        Llama(write_tiny(tmp_path / "gpt2.gguf", arch="gpt2"))


def test_missing_tensor_is_named(tmp_path):
    with pytest.raises(ModelError, match="blk.0.attn_k.weight"):
        Llama(write_tiny(tmp_path / "missing.gguf", drop={"blk.0.attn_k.weight"}))


def test_misshaped_tensor_is_named(tmp_path):
    with pytest.raises(ModelError, match="blk.0.ffn_up.weight"):
        Llama(write_tiny(tmp_path / "shape.gguf", shapes={"blk.0.ffn_up.weight": (48, 32)}))
