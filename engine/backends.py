"""The backend seam: the ops every backend offers (``Backend``) and the registry of backends by name.

``engine.model`` runs the forward pass on whichever backend it is given:

    plain    engine.plain.PlainBackend      the textbook: float32 NumPy, close to llama.cpp's logits
    numpy    engine.exact.NumpyBackend      exact: ggml's arithmetic in NumPy, llama.cpp's logits bit for bit
    cython   engine.compiled.CythonBackend  exact and fast: compiled kernels with the numpy backend's results
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .errors import ArgumentError, LlamaError
from .exact import NumpyBackend
from .isa import resolve_isa
from .operands import Rope, Weight
from .plain import PlainBackend


class Backend(Protocol):
    """The ops of a LLaMA forward pass. Activations are float32 and C-contiguous; ``w`` is a weight
    used in place from the file; each backend may read or regroup the weights as it likes."""

    name: str

    def prepare(self, weights) -> None:
        """Called once at load with the ``model.Weights``."""

    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        """The embedding lookup: (n,) int -> (n, w.n_in)."""

    def matmul(self, w: Weight, x: np.ndarray) -> np.ndarray:
        """x · wᵀ: (n, w.n_in) -> (n, w.n_out)."""

    def matmuls(self, ws: tuple[Weight, ...], x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The products of one input with weights sharing n_in: (n, n_in) -> one (n, w.n_out) per w."""

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x / sqrt(mean(x²) + eps) · weight: (n, d), (d,) -> (n, d)."""

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        """Each head's pairs (``rope.pairs()``) rotated at its row's position:
        (n, heads, hd), (n,) -> (n, heads, hd)."""

    def rope_qk(self, q: np.ndarray, k: np.ndarray, positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
        """``rope`` of q (n, n_heads, hd) and of k (n, n_kv_heads, hd) at the same positions, in one call."""

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int,
                  scale: float, window: int = 0) -> np.ndarray:
        """Causal softmax(q·kᵀ·scale)·v: q (n, n_heads, hd) at positions [start, start + n), the float16
        caches (n_kv_heads, n_ctx, hd) already holding positions [0, start + n) -> (n, n_heads * hd);
        with a ``window`` (not 0), the query at position p sees the keys (p - window, p] only."""

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """silu(gate) · up: (n, f), (n, f) -> (n, f)."""

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """gelu(gate) · up: (n, f), (n, f) -> (n, f)."""

    def decoder(self, hp, weights):
        """None, or a decoder of the model whose ``model.HParams`` and ``model.Weights`` are given:
        its ``decode(x, cache, start)`` takes one row x (1, dim) at position ``start`` through every
        layer in one call, with the bits of these ops layer by layer."""


def _compiled(n_threads: int | None = None, batch_invariant: bool = False, isa: str = "avx2") -> Backend:
    """The compiled backend, or LlamaError when its kernels are not built."""
    backend = _compiled_class()
    if backend is None:
        raise LlamaError("the cython backend is not built (run `pip install -e . --no-build-isolation`); "
                         "use backend='numpy'")
    return backend(n_threads, batch_invariant, isa)


def _compiled_class():
    try:
        from .compiled import CythonBackend
    except ImportError:
        return None
    return CythonBackend


# name -> constructor(n_threads, isa=), or for the exact ones constructor(n_threads, batch_invariant, isa=):
# isa (engine.isa.ISAS) is the llama.cpp build an exact backend mirrors
BACKENDS: dict[str, Callable[..., Backend]] = {
    "plain": PlainBackend,
    "numpy": NumpyBackend,
    "cython": _compiled,
}
EXACT = ("numpy", "cython")  # the backends whose logits are llama.cpp's, bit for bit


def make_backend(name: str, n_threads: int | None, batch_invariant: bool = False, isa: str = "auto") -> Backend:
    """The backend called ``name`` (one of BACKENDS), or for "auto" the fastest exact one built,
    with the arithmetic of llama.cpp's ``isa`` build (``engine.isa``; "auto": this CPU's).

    ``batch_invariant``: every row of a matrix product and of attention gets the arithmetic a
    one-row call gives it (llama.cpp's kernels for a single token), so a row's result does not
    depend on how many rows share the call; only the exact backends offer it.
    """
    isa = resolve_isa(isa)
    if name == "auto":
        name = "cython" if _compiled_class() is not None else "numpy"
    if name not in BACKENDS:
        raise ArgumentError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    if batch_invariant:
        if name not in EXACT:
            raise ArgumentError(f"backend {name!r} is not batch invariant; use one of {', '.join(EXACT)}")
        return BACKENDS[name](n_threads, batch_invariant, isa=isa)
    return BACKENDS[name](n_threads, isa=isa)
