"""llama.cpp's vocabulary test files, from the llama-cpp-python sdist the project pins.

llama.cpp keeps a vocabulary-only GGUF of each tokenizer it tests in
``vendor/llama.cpp/models/ggml-vocab-*.gguf``, with test vectors beside it
(``.gguf.inp``: inputs split by ``__ggml_vocab_test__`` lines; ``.gguf.out``: one
line of expected ids per input). They are too big to commit, so the tests and
the tokenizer benchmark fetch the sdist once with pip and unpack only these.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

PACKAGE = "llama-cpp-python==0.3.36"
SDIST = "llama_cpp_python-0.3.36.tar.gz"
MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models"


def vocab_folder(cache: Path) -> Path:
    """The folder under ``cache`` holding the ggml-vocab-* files, fetched and unpacked if not yet there.

    Raises RuntimeError when pip cannot download the sdist.
    """
    folder = cache / "ggml-vocab-0.3.36"
    complete = folder / ".complete"
    if complete.exists():
        return folder
    sdists = cache / "sdist"
    if not (sdists / SDIST).exists():
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
                              "-d", str(sdists)], capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError(f"pip could not download the {PACKAGE} sdist:\n{pip.stderr[-2000:]}")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdists / SDIST) as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if member.isfile() and path.name.startswith("ggml-vocab-") and path.parent.as_posix() == MODELS:
                (folder / path.name).write_bytes(tar.extractfile(member).read())  # the bare name: no paths
    complete.touch()
    return folder
