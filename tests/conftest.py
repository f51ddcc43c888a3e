"""Shared fixtures: paths to test data and synthetic models built once per cache.

Synthetic models are written by ``scripts/make_model.py`` and, for quantised
variants, quantised by llama.cpp itself; they are cached in ``tests/.cache``
(or ``$LLAMANP_TEST_CACHE``) keyed by their spec, so a session builds each once.
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CACHE = Path(os.environ.get("LLAMANP_TEST_CACHE", ROOT / "tests" / ".cache"))
sys.path.insert(0, str(ROOT))

from scripts.make_model import ModelSpec, cached_model  # noqa: E402


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
    cache with pip and unpacked once; without them the tests fail, never skip.
    """
    folder = CACHE / "ggml-vocab-0.3.36"
    complete = folder / ".complete"
    if not complete.exists():
        sdists = CACHE / "sdist"
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                              "llama-cpp-python==0.3.36", "-d", str(sdists)], capture_output=True, text=True)
        if pip.returncode != 0:
            pytest.fail(f"pip could not download the llama-cpp-python 0.3.36 sdist:\n{pip.stderr[-2000:]}")
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdists / "llama_cpp_python-0.3.36.tar.gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if (member.isfile() and path.name.startswith("ggml-vocab-")
                        and path.parent.as_posix() == "llama_cpp_python-0.3.36/vendor/llama.cpp/models"):
                    (folder / path.name).write_bytes(tar.extractfile(member).read())  # the bare name: no paths
        complete.touch()
    return folder


@pytest.fixture(scope="session")
def make_model():
    """``make_model(quant=None, **spec)`` -> path of a cached synthetic model (see ModelSpec)."""
    def make(quant: str | None = None, **spec) -> Path:
        return cached_model(CACHE, ModelSpec(**spec), quant)
    return make
