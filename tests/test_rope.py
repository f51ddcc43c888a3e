"""Rope variants: Llama 3's frequency factors against llama.cpp, and the scalings we refuse.

A Llama 3.1 file carries ``rope_freqs.weight``, one divisor per rotated pair, which
llama.cpp applies to every angle; a synthetic model with that tensor gives llama.cpp's
logits bit for bit on both backends, and so does a file whose scaling type "none"
overrides its factor. The scalings the engine does not implement (YaRN, LongRoPE, an
attention factor on cos and sin) are refused when the file is loaded, never run with the
wrong angles.
"""
import numpy as np
import pytest

from engine import Llama
from engine.backends import EXACT
from engine.errors import ModelError
from tests.helpers import llama_cpp_logits
from tests.model_files import with_metadata, write_tiny

N_CTX = 64


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1] + np.random.default_rng(3).integers(300, 32000, 44).tolist()


def test_llama3_rope_factors_equal_llama_cpp(make_model, tokens):
    path = make_model(n_layers=1, rope_freqs=True)
    ref = llama_cpp_logits(path, tokens)
    for backend in EXACT:
        with Llama(path, n_ctx=N_CTX, backend=backend) as llm:
            assert llm.hparams.rope.freq_factors is not None
            assert np.array_equal(llm.eval_logits(tokens), ref), backend
    # the factors matter: the same weights without them give other logits
    assert not np.array_equal(llama_cpp_logits(make_model(n_layers=1), tokens), ref)


def test_scaling_type_none_ignores_the_factor_like_llama_cpp(make_model, tokens, tmp_path):
    plain = make_model(n_layers=1)
    none = with_metadata(plain, tmp_path / "none.gguf",
                         {"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0})
    ref = llama_cpp_logits(none, tokens)
    assert np.array_equal(ref, llama_cpp_logits(plain, tokens))
    with Llama(none, n_ctx=N_CTX, backend="cython") as llm:
        assert llm.hparams.rope.freq_scale == 1.0
        assert np.array_equal(llm.eval_logits(tokens), ref)


@pytest.mark.parametrize("metadata, message", [
    ({"llama.rope.scaling.type": "yarn"}, "rope scaling STRING 'yarn' is not supported; supported: none, linear"),
    ({"llama.rope.scaling.type": "longrope"}, "rope scaling STRING 'longrope' is not supported"),
    ({"llama.rope.scaling.type": "ntk"}, "rope scaling STRING 'ntk' is not supported"),
    ({"llama.rope.scaling.attn_factor": 0.5}, "attn_factor 0.5 is not supported"),
    ({"llama.rope.scaling.factor": -2.0}, r"rope.scaling.factor = -2.0 is outside \[0.0, "),
])
def test_unsupported_rope_scaling_is_refused_at_load(tmp_path, metadata, message):
    path = write_tiny(tmp_path / "scaled.gguf", metadata=metadata)
    with pytest.raises(ModelError, match=message):
        Llama(path)


@pytest.mark.parametrize("factors, message", [
    (np.ones(3, np.float32), r"an F32 vector of 4, got F32 \[3\]"),
    (np.ones(4, np.float16), r"an F32 vector of 4, got F16 \[4\]"),
    (np.float32([1, 2, 0, 8]), "positive finite factors"),
    (np.float32([1, 2, np.inf, 8]), "positive finite factors"),
])
def test_bad_rope_factors_are_refused_at_load(tmp_path, factors, message):
    path = write_tiny(tmp_path / "factors.gguf", extra_tensors={"rope_freqs.weight": factors})
    with pytest.raises(ModelError, match=message):
        Llama(path)
