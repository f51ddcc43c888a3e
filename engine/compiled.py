"""The compiled backend: ``engine.exact.NumpyBackend``'s ops on the Cython/OpenMP kernels in ``kernels/``.

Same methods, shapes, dtypes and rounding points as the NumPy reference, so a model can
swap one for the other op by op.  Each weight becomes a ``kernels.matmul.Matrix`` the
first time it is multiplied (the Q4_0 and Q4_K weights llama.cpp repacks, ``Weight.repacked``,
are regrouped then, the others copied onto huge pages, and the mmap'd pages of the original
released); ``prepare``, which the model calls at load, does that for a whole model up front.
``decoder`` runs a decoded token through every layer in one call on the same kernels (``kernels.decoder``).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from kernels import decoder, layers, parallel
from kernels.matmul import (BLOCK32_TYPES, K_QUANT_TYPES, Blocks32Stack, KQuantStack, Matrix, get_rows,
                            is_file_mapping, release_file_pages)

from .exact import NumpyBackend
from .ggml_math import gelu_table
from .isa import ISAS, check_isa
from .operands import Rope, Weight
from .threads import check_threads


class Stack(NamedTuple):
    """Weights multiplied together: their stacked kernel matrix (None if they do not stack) and
    the index of each one's columns in its product."""
    weights: tuple[Weight, ...]  # kept alive, so the ids keying the stack stay theirs
    matrix: Matrix | Blocks32Stack | KQuantStack | None
    columns: tuple[tuple[slice, slice], ...]


class CythonBackend:
    """Ops on compiled kernels, ``n_threads`` OpenMP threads each (None: OpenMP's default); with
    ``batch_invariant``, products and attention give every row its one-row arithmetic."""

    name = "cython"

    def __init__(self, n_threads: int | None = None, batch_invariant: bool = False, isa: str = "avx2"):
        self.n_threads = parallel.check_threads(check_threads(n_threads))  # None: OpenMP's default team
        self.batch_invariant = batch_invariant
        self.isa = check_isa(isa)  # whose arithmetic: llama.cpp built for AVX2 or AVX-512 (engine.isa)
        self._isa = ISAS.index(self.isa)  # the kernels' number for it
        self._matrices: dict[int, tuple[Weight, Matrix]] = {}  # id(weight) -> (weight, its kernel matrix)
        self._stacks: dict[tuple[int, ...], Stack] = {}  # ids of the weights -> their stack
        self._reference = NumpyBackend(isa=self.isa)
        # per rope: the last positions, and their cos and sin
        self._cos_sin: dict[Rope, tuple[bytes, tuple[np.ndarray, np.ndarray]]] = {}

    def matrix(self, w: Weight, release_source: bool = True) -> Matrix:
        """The kernel matrix of ``w``, built on first use."""
        entry = self._matrices.get(id(w))
        if entry is None:
            entry = (w, Matrix(w.data, int(w.type), w.n_in, repacked=w.repacked(self.isa),
                               release_source=release_source, isa=self._isa))
            self._matrices[id(w)] = entry
        return entry[1]

    def stacked(self, ws: tuple[Weight, ...],
                release_source: bool = True) -> Matrix | Blocks32Stack | KQuantStack | None:
        """One kernel matrix of the rows of ``ws`` one after another (built on first use), or None
        when they do not stack.

        Stacking changes no result: the parts share their input length, and either their type
        with a multiple of 8 rows each, or they are all 32-weight types that llama.cpp does not
        repack (a Blocks32Stack), or all K-quants of mixed types (a KQuantStack of their own
        matrices), so every row meets the kernel and activation rounding it would alone; one
        product then quantises the input once (per rounding) and wakes the threads once.
        """
        return self._stack(ws, release_source).matrix

    def _stack(self, ws: tuple[Weight, ...], release_source: bool = True) -> Stack:
        key = tuple(map(id, ws))
        stack = self._stacks.get(key)
        if stack is None:
            first = ws[0]
            same_input = len(ws) > 1 and all(w.n_in == first.n_in for w in ws)
            if same_input and all(w.type == first.type and w.n_out % 8 == 0 for w in ws):
                # every part a multiple of 8 rows: each is repacked exactly when the stack is
                matrix = Matrix([w.data for w in ws], int(first.type), first.n_in, repacked=first.repacked(self.isa),
                                isa=self._isa)
            elif same_input and all(w.type in BLOCK32_TYPES for w in ws):
                matrix = Blocks32Stack([w.data for w in ws], [int(w.type) for w in ws], first.n_in)
            elif same_input and all(w.type in K_QUANT_TYPES for w in ws):
                matrix = KQuantStack([self.matrix(w, release_source=False) for w in ws])
            else:
                matrix = None
            if matrix is not None and release_source:  # a copy
                release_file_pages([w.data for w in ws if is_file_mapping(w.data)])
            ends = itertools.accumulate(w.n_out for w in ws)
            columns = tuple((slice(None), slice(end - w.n_out, end)) for w, end in zip(ws, ends))
            stack = self._stacks[key] = Stack(ws, matrix, columns)
        return stack

    def prepare(self, weights) -> None:
        """Build the kernel matrices of a ``model.Weights`` now rather than on first use.

        Every matrix holds a copy of its weights (regrouped, stacked, or moved onto huge
        pages); the mmap'd originals are released a layer at a time: one call per layer keeps
        the peak near one copy of the weights without paying a TLB shootdown per matrix.
        """
        for layer in weights.layers:
            products = (layer.qkv, layer.gate_up, (layer.wo,), (layer.w_down,))
            for ws in products:
                if self.stacked(ws, release_source=False) is None:
                    for w in ws:
                        self.matrix(w, release_source=False)
            release_file_pages([w.data for ws in products for w in ws if is_file_mapping(w.data)])
        self.matrix(weights.output)  # releases its own mmap'd pages

    def decoder(self, hp, weights) -> "TokenDecoder":
        """One token through every layer in one call (``kernels.decoder``), on this backend's matrices."""
        return TokenDecoder(self, hp, weights)

    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``w`` as float32 (the NumPy dequantiser for the types without a compiled one)."""
        rows = get_rows(w.data, int(w.type), w.n_in, ids)
        return self._reference.get_rows(w, ids) if rows is None else rows

    def matmul(self, w: Weight, x: np.ndarray) -> np.ndarray:
        return self.matrix(w).matmul(x, self.n_threads, self.batch_invariant)  # (n, n_out)

    def matmuls(self, ws: tuple[Weight, ...], x: np.ndarray) -> tuple[np.ndarray, ...]:
        stack = self._stack(ws)
        if stack.matrix is None:
            return tuple(self.matmul(w, x) for w in ws)
        out = stack.matrix.matmul(x, self.n_threads, self.batch_invariant)  # (n, sum of n_out)
        return tuple([out[columns] for columns in stack.columns])         # column views, no copies

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        return layers.rms_norm(x, weight, eps, self.n_threads)

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        return layers.rope(x, *self._angles(positions, rope), self.n_threads, rope.neox)

    def rope_qk(self, q: np.ndarray, k: np.ndarray, positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
        return layers.rope_qk(q, k, *self._angles(positions, rope), self.n_threads, rope.neox)

    def _angles(self, positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin of ``positions``' angles (n, n_dims / 2).  Every layer rotates q and k at the
        same positions, so they are computed once per batch (per rope: Gemma's windowed layers have
        their own)."""
        entry = self._cos_sin.get(rope)
        if entry is None or entry[0] != positions.tobytes():
            angles = layers.rope_cos_sin(positions, rope.n_dims, rope.freq_base, rope.freq_scale, rope.freq_factors)
            entry = self._cos_sin[rope] = positions.tobytes(), angles
        return entry[1]

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int, scale: float,
                  window: int = 0) -> np.ndarray:
        return layers.attention(q, k_cache, v_cache, start, scale, self.n_threads, window,
                                self.batch_invariant, self._isa)            # (n, n_heads*hd)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return layers.swiglu(gate, up, self.n_threads, self._isa)

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return layers.geglu(gate, up, gelu_table(), self.n_threads)


class TokenDecoder:
    """A ``kernels.decoder.Decoder`` of one model on a ``CythonBackend``: the products its layers
    take (stacked where ``matmuls`` stacks them), its norms and hyperparameters, checked once."""

    def __init__(self, backend: CythonBackend, hp, weights):
        self.backend = backend
        self.ropes = (hp.rope,) if hp.rope_swa is None else (hp.rope, hp.rope_swa)
        family = hp.family
        per_layer = [decoder.DecoderLayer(self._products(layer.qkv), backend.matrix(layer.wo),
                                       self._products(layer.gate_up), backend.matrix(layer.w_down),
                                       layer.attn_norm, layer.ffn_norm, layer.qkv_bias, layer.q_norm, layer.k_norm,
                                       layer.attn_post_norm, layer.ffn_post_norm, hp.window(i),
                                       self.ropes.index(hp.layer_rope(i)))
                  for i, layer in enumerate(weights.layers)]
        self.decoder = decoder.Decoder(per_layer, hp.dim, hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.ffn, hp.rms_eps,
                                       hp.attn_scale, family.neox, family.scale_q,
                                       gelu_table() if family.gelu else None, backend._isa)

    def _products(self, ws: tuple[Weight, ...]) -> list[tuple]:
        """(kernel matrix, first column) of each product ``matmuls`` takes of ``ws``: their stack, or each."""
        stack = self.backend._stack(ws)
        if stack.matrix is not None:
            return [(stack.matrix, 0)]
        return [(self.backend.matrix(w), columns.start) for w, (_, columns) in zip(ws, stack.columns)]

    def decode(self, x: np.ndarray, cache, start: int) -> np.ndarray:
        """The row x (1, dim) at position ``start`` through every layer, its keys and values written
        into ``cache`` (a ``model.KVCache``): (1, dim)."""
        positions = np.array([start], np.int64)
        angles = [self.backend._angles(positions, rope) for rope in self.ropes]
        return self.decoder.decode(x, cache.k, cache.v, start, angles, self.backend.n_threads)
