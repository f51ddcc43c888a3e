"""Shared fixtures: paths to test data and synthetic models built once per cache.

Synthetic models are written by ``tests/model_files.py`` and, for quantised
variants, quantised by llama.cpp itself; they are cached in ``tests/.cache``
(or ``$LLAMANP_TEST_CACHE``) keyed by their spec, so a session builds each once.
Real models are pulled into the same cache with the pinned download ``llamanp pull`` uses.
"""
import os
from pathlib import Path

import llama_cpp as lc
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CACHE = Path(os.environ.get("LLAMANP_TEST_CACHE", ROOT / "tests" / ".cache"))

from engine.models import pull
from tests.llama_cpp_vocabs import vocab_folder
from tests.helpers import reference_isa
from tests.model_files import ModelSpec, cached_model, quantize_model
from tests.sampler_reference import Ref
from tests.tiny_shakespeare import quantized_model

# every Llama (and llamanp command) of the suite computes what the llama.cpp it is compared
# with computes: the AVX2 or the AVX-512 build's arithmetic, whichever llama_cpp is
os.environ["LLAMANP_GGML_ISA"] = reference_isa()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    """The llama2 vocabulary as a vocab-only GGUF (llama.cpp's models/ggml-vocab-llama-spm.gguf)."""
    return DATA / "ggml-vocab-llama-spm.gguf"


@pytest.fixture(scope="session")
def llama_cpp_vocabs() -> Path:
    """The folder of llama.cpp's vocabulary test files (models/ggml-vocab-*.gguf, .inp, .out).

    They come from the pinned llama-cpp-python 0.3.36 sdist, fetched once into the
    cache with pip and unpacked once (tests/llama_cpp_vocabs.py); without them the
    tests fail, never skip.
    """
    try:
        return vocab_folder(CACHE)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def make_model():
    """``make_model(quant=None, **spec)`` -> path of a cached synthetic model (see ModelSpec)."""
    def make(quant: str | None = None, **spec) -> Path:
        return cached_model(CACHE, ModelSpec(**spec), quant)
    return make


@pytest.fixture(scope="session")
def gemma3_270m() -> Path:
    """Gemma 3 270M (Q4_K_M), pulled with the pinned download ``llamanp pull`` uses."""
    return pull("gemma-3-270m", cache=CACHE)


@pytest.fixture(scope="session")
def smollm2():
    """``smollm2(quant=None)`` -> SmolLM2-135M-Instruct: the Q4_1 file as shipped, or llama.cpp's
    requantisation of it to ``quant`` (Q8_0, Q4_K_M, ...). A failed download fails the test."""
    shipped = pull("smollm2-135m-instruct", cache=CACHE)

    def get(quant: str | None = None) -> Path:
        if quant is None:
            return shipped
        out = CACHE / f"{shipped.stem}-requantised-{quant}.gguf"
        if not out.exists():
            quantize_model(shipped, out.with_suffix(".tmp"), quant, allow_requantize=True).rename(out)
        return out
    return get


@pytest.fixture(scope="session")
def tiny_quantised():
    """``tiny_quantised(qtype)`` -> the shipped tiny model requantised by llama.cpp (Q4_0, Q2_K, F16, ...)."""
    return lambda qtype: quantized_model(qtype, CACHE)


@pytest.fixture
def llama():
    """``llama(init, *args)`` makes a llama.cpp sampler, freed after the test."""
    made = []

    def make(init, *args):
        made.append(Ref(init(*args)))
        return made[-1]

    yield make
    for ref in made:
        lc.llama_sampler_free(ref.ptr)
