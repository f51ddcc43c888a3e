"""The operands a backend's ops take besides activations: a weight matrix used in place from
the file (``Weight``) and a RoPE configuration (``Rope``).

``Weight.repacked`` is the one statement of llama.cpp's repacking rule; both exact backends
(and the model loader) take the decision from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quants import GGMLType


# the types llama.cpp repacks (with a multiple of 8 rows), by the ISA it is built for (engine.isa)
REPACKED_TYPES = {"avx2": (GGMLType.Q4_0, GGMLType.Q4_K), "avx512": (GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q2_K)}


@dataclass(frozen=True)
class Weight:
    """A 2-D weight used in place from the file: ``data`` is the mmap view that ``GGUFFile.tensor`` gives."""
    name: str
    type: GGMLType
    n_in: int    # row length (ggml ne0)
    n_out: int   # number of rows (ggml ne1)
    data: np.ndarray  # F32/F16: (n_out, n_in) typed; BF16 and quantised: (n_out, bytes_per_row) uint8

    def repacked(self, isa: str = "avx2") -> bool:
        """Whether llama.cpp's x86 CPU backend built for ``isa`` repacks this weight: Q4_0 and Q4_K
        with a multiple of 8 rows, on AVX-512 Q2_K too.

        Repacked weights run other kernels (another summation order), and get their
        activations quantised four rows at a time, which for Q8_K picks the sign of the
        scale differently (see ``quants.quantize_q8_K``).
        """
        return self.n_out % 8 == 0 and self.type in REPACKED_TYPES[isa]


@dataclass(frozen=True)
class Rope:
    """RoPE over the first ``n_dims`` of each head: pairs (x[2i], x[2i+1]) in ggml's NORM mode,
    (x[i], x[i + n_dims/2]) in its NEOX mode."""
    n_dims: int
    freq_base: float
    freq_scale: float = 1.0  # 1 / linear scaling factor
    freq_factors: tuple[float, ...] | None = None  # (n_dims/2,) divisors of each pair's theta: Llama 3's rope_freqs
    neox: bool = False

    def pairs(self) -> tuple[slice, slice]:
        """Where each pair's first and second values lie in a head."""
        if self.neox:
            return slice(0, self.n_dims // 2), slice(self.n_dims // 2, self.n_dims)
        return slice(0, self.n_dims, 2), slice(1, self.n_dims, 2)
