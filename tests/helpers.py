"""Small things several test modules share: random prompts, the NMSE measure, llama.cpp's logits, the
llamanp command."""
import os
import subprocess
import sys

import llama_cpp
import numpy as np

from tests.model_files import quiet_llama_cpp


def nmse(ref: np.ndarray, ours: np.ndarray) -> float:
    """mean((ref - ours)^2) / var(ref), in float64."""
    ref = ref.astype(np.float64)
    return float(np.mean((ref - ours) ** 2) / np.var(ref))


def reference_isa() -> str:
    """The kernel family (engine.isa) of the llama.cpp that llama_cpp was built with: its
    system info lists AVX512 = 1 in a build for AVX-512, so tests compare like with like."""
    return "avx512" if b"AVX512 = 1" in llama_cpp.llama_print_system_info() else "avx2"


def llama_cpp_logits(path, tokens: list[int], n_ctx: int = 64) -> np.ndarray:
    """llama.cpp's logits of every position of ``tokens`` evaluated afresh: (len(tokens), n_vocab)."""
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        ref.eval(tokens)
        return np.array(ref.scores[:len(tokens)], dtype=np.float32)
    finally:
        ref.close()


def llamanp(*args, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``llamanp ARGS`` in a subprocess; ``env`` adds to (or overrides) the environment."""
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], input=stdin,
                          env=os.environ | (env or {}), capture_output=True, text=True, timeout=300)


def random_tokens(seed: int, n: int) -> list[int]:
    """Ordinary (non-control) token ids of the llama2 vocabulary."""
    return [int(t) for t in np.random.default_rng(seed).integers(3, 32000, n)]
