"""The compiled backend: ``engine.ggml_ops.NumpyBackend``'s ops on the Cython/OpenMP kernels.

Same methods, shapes, dtypes and rounding points as the NumPy reference, so a model can
swap one for the other op by op.  Each weight becomes a ``kernels.matmul.Matrix`` the
first time it is multiplied (Q4_0 and Q4_K weights are regrouped then, and the mmap'd
pages of the original released); ``prepare``, which the model calls at load, does that
for a whole model up front.
"""
from __future__ import annotations

import numpy as np

from engine.ggml_ops import NumpyBackend, Rope, Weight

from . import layers
from .matmul import Matrix, get_rows, is_file_mapping, release_file_pages
from .parallel import check_threads


class CythonBackend:
    """Ops on compiled kernels, ``n_threads`` OpenMP threads each (None: OpenMP's default)."""

    name = "cython"

    def __init__(self, n_threads: int | None = None):
        self.n_threads = check_threads(n_threads)
        self._matrices: dict[int, tuple[Weight, Matrix]] = {}  # id(weight) -> (weight, its kernel matrix)
        self._reference = NumpyBackend()
        self._angles: tuple[tuple, tuple[np.ndarray, np.ndarray]] | None = None  # last positions' rope cos, sin

    def matrix(self, w: Weight, release_source: bool = True) -> Matrix:
        """The kernel matrix of ``w``, built on first use."""
        entry = self._matrices.get(id(w))
        if entry is None:
            entry = (w, Matrix(w.data, int(w.type), w.n_in, regroup=True, release_source=release_source))
            self._matrices[id(w)] = entry
        return entry[1]

    def prepare(self, weights) -> None:
        """Build the kernel matrix of every 2-D weight of a ``model.Weights`` now rather than on first use.

        The mmap'd originals of regrouped weights are released a layer at a time: one
        call per layer keeps the peak near one copy of the weights without paying a TLB
        shootdown per matrix.
        """
        groups = [(layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate, layer.w_up, layer.w_down)
                  for layer in weights.layers] + [(weights.output,)]
        for group in groups:
            release_file_pages([w.data for w in group
                                if self.matrix(w, release_source=False).regrouped and is_file_mapping(w.data)])

    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``w`` as float32 (the NumPy dequantiser for the types without a compiled one)."""
        rows = get_rows(w.data, int(w.type), w.n_in, ids)
        return self._reference.get_rows(w, ids) if rows is None else rows

    def matmul(self, w: Weight, x: np.ndarray) -> np.ndarray:
        return self.matrix(w).matmul(x, self.n_threads)                     # (n, n_out)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        return layers.rms_norm(x, weight, eps, self.n_threads)

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        """Every layer rotates q and k at the same positions, so the angles are computed once per batch."""
        key = (rope, positions.tobytes())
        if self._angles is None or self._angles[0] != key:
            self._angles = key, layers.rope_angles(positions, rope.n_dims, rope.freq_base, rope.freq_scale)
        return layers.rope(x, *self._angles[1], self.n_threads)

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int, scale: float) -> np.ndarray:
        return layers.attention(q, k_cache, v_cache, start, scale, self.n_threads)  # (n, n_heads*hd)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return layers.swiglu(gate, up, self.n_threads)
