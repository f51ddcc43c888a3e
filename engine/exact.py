"""The exact backend: the ops of a LLaMA forward pass computed the way ggml's CPU backend computes them.

Each op mirrors ggml's rounding where it decides the result: matrix products quantise
their activations to the weight type's ``vec_dot_type`` (f16 for F16 weights, bf16 for
BF16 weights, Q8_0 or Q8_1 for the 32-weight quants, Q8_K for the K-quants) and take integer block dot
products with fp32 scaling; the attention rounds q and the softmax probabilities to
f16 before multiplying them with the f16 KV cache; RMSNorm sums squares in double.

Beyond that, the fp32 steps follow the kernels llama.cpp runs on an x86 CPU, built for
AVX2 or for AVX-512 (``NumpyBackend.isa``, see ``engine.isa``), since a one-ulp difference
can flip the f16 rounding of a cached key or an F16 model's next activations, and flips
add up over a prompt: float products sum in the order of
ggml_vec_dot_f32/_f16/_bf16 (one activation row) or llamafile's tinyBLAS (several rows)
(``engine.float_dots``); quantised products accumulate their exact integer block sums with the fused
multiply-adds of the kernel that type and batch size select (vec_dot, tinyBLAS, the
repacked Q4_0/Q4_K kernels and on AVX-512 the repacked Q2_K one, the tiled K-quant kernel:
``engine.quant_dots``); RoPE calls the C library's cosf/sinf and fuses its rotation like
the compiled code; softmax and SwiGLU use ggml's vector exp (``engine.ggml_math``).  The
AVX-512 build differs in its float vector widths (16 lanes: the f32/f16 dots step 64
elements, tinyBLAS 16, softmax sums groups of 16, and bf16 products go through
vdpbf16ps), its vector exp, and its repacking of Q2_K; its integer dots (VNNI) compute
the same exact sums.  With these, logits on F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M and
Q6_K files come out bit-identical to llama.cpp's in our tests, and so do Q4_1, Q5_0, Q5_1, Q2_K
and Q3_K_M ones.  Only few-row products with a Q4_K matrix that llama.cpp does not
repack (rows not a multiple of 8) still sum their exact integers in plain double.

``NumpyBackend`` is the exact reference of the ops contract ``engine.backends.Backend``;
``engine.plain`` computes the same ops the textbook way, ``engine.compiled`` the same bits in compiled kernels.
"""
from __future__ import annotations

import numpy as np

from . import quants
from .errors import ModelError
from .float_dots import float_dots
from .ggml_math import gelu_table, ggml_expf, rope_cos_sin, softmax, to_f16
from .isa import check_isa
from .operands import Rope, Weight
from .quant_dots import DOTS
from .quants import GGMLType

CHUNK_ELEMENTS = 1 << 22  # bound on weight rows x activation rows x sub-blocks per step
MAX_CHUNK_ROWS = 4096     # weight rows unpacked at a time, so no whole matrix is ever converted


class NumpyBackend:
    """The readable reference implementation of every op; with ``batch_invariant``, a matrix product
    or attention over several rows is the rows' one-row calls, one after another."""

    name = "numpy"

    def __init__(self, n_threads: int | None = None, batch_invariant: bool = False, isa: str = "avx2"):
        self.n_threads = n_threads  # NumPy decides its own threading; kept for a uniform interface
        self.batch_invariant = batch_invariant
        self.isa = check_isa(isa)   # whose arithmetic: llama.cpp built for AVX2 or AVX-512 (engine.isa)

    def prepare(self, weights) -> None:
        """Nothing to do: the reference reads every weight in place from the file."""

    def decoder(self, hp, weights) -> None:
        """None: the model runs these ops layer by layer."""
        return None

    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``w`` as float32 (an embedding lookup)."""
        rows = w.data[ids]                                                  # (n, bytes or n_in)
        if w.type in (GGMLType.F32, GGMLType.F16):
            return rows.astype(np.float32)
        return quants.dequantize(rows, w.type, w.n_in).astype(np.float32)   # (n, n_in)

    def matmul(self, w: Weight, x: np.ndarray) -> np.ndarray:
        """``x @ w.T`` with ggml's activation rounding and block arithmetic for ``w``'s type."""
        if self.batch_invariant and x.shape[0] > 1:
            return np.concatenate([self.matmul(w, x[t:t + 1]) for t in range(x.shape[0])])  # (n, n_out)
        dot = DOTS.get(w.type)
        if dot is None:
            raise ModelError(f"{w.name}: matrix products with {w.type.name} weights are not supported")
        xq = dot.prepare(x, w.repacked(self.isa))
        out = np.empty((x.shape[0], w.n_out), np.float32)                  # (n, n_out)
        chunk = min(MAX_CHUNK_ROWS, max(8, CHUNK_ELEMENTS // (x.shape[0] * max(1, w.n_in // 16))))
        for r in range(0, w.n_out, chunk):
            out[:, r:r + chunk] = dot.rows(w.data[r:r + chunk], w, xq, self.isa)
        return out

    def matmuls(self, ws: tuple[Weight, ...], x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The products of one input with several weights (a compiled backend may fuse them)."""
        return tuple(self.matmul(w, x) for w in ws)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x / sqrt(mean(x^2) + eps) * weight; the squares summed left to right in double, the scale in float."""
        mean = (np.cumsum((x * x).astype(np.float64), axis=-1)[:, -1] / x.shape[-1]).astype(np.float32)  # (n,)
        scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
        return x * scale[:, None] * weight

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        """Rotate each pair (x0, x1) of each head (``Rope.pairs``) by position * theta_i."""
        cos, sin = rope_cos_sin(positions, rope)                            # (n, n_dims/2)
        cos, sin = cos[:, None, :], sin[:, None, :]                         # (n, 1, n_dims/2)
        first, second = rope.pairs()
        x0 = x[..., first].astype(np.float64)                               # (n, heads, n_dims/2)
        x1 = x[..., second].astype(np.float64)
        out = x.copy()
        # ggml's compiled rotation fuses the first product into the add: fma(x0, cos, -(x1 * sin))
        out[..., first] = x0 * cos - (x1 * sin).astype(np.float32)
        out[..., second] = x0 * sin + (x1 * cos).astype(np.float32)
        return out

    def rope_qk(self, q: np.ndarray, k: np.ndarray, positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
        """q and k, each rotated by ``rope``."""
        return self.rope(q, positions, rope), self.rope(k, positions, rope)

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int, scale: float,
                  window: int = 0) -> np.ndarray:
        """Causal softmax(q·K^T * scale)·V over the cache, each query head reading kv head h // group;
        with a ``window``, the query at position p sees keys (p - window, p] only (llama.cpp's standard
        sliding window: key p0 is masked when p - p0 >= window).

        As in ggml's non-flash attention, q and the probabilities are rounded to f16 like
        the cache they multiply, and both products sum in ggml's order (``float_dots``);
        both run over the keys padded with zeros to a multiple of 64, as over llama.cpp's
        padded cache view (its n_kv is a multiple of 256), so vec_dot has no tail.
        """
        n, n_heads, head_dim = q.shape
        if self.batch_invariant and n > 1:
            return np.concatenate([self.attention(q[t:t + 1], k_cache, v_cache, start + t, scale, window)
                                   for t in range(n)])                        # (n, n_heads*hd)
        n_kv_heads = k_cache.shape[0]
        group = n_heads // n_kv_heads
        n_keys = start + n
        pad = -n_keys % 64
        keys = k_cache[:, None, :n_keys].astype(np.float32)                  # (n_kv_heads, 1, n_keys, hd)
        keys = np.pad(keys, ((0, 0), (0, 0), (0, pad), (0, 0)))              # (n_kv_heads, 1, n_keys+pad, hd)
        values = v_cache[:, None, :n_keys].astype(np.float32)                # (n_kv_heads, 1, n_keys, hd)
        values = np.pad(values, ((0, 0), (0, 0), (0, pad), (0, 0)))          # (n_kv_heads, 1, n_keys+pad, hd)
        qg = to_f16(q).transpose(1, 0, 2).reshape(n_kv_heads, group, n, head_dim)  # (n_kv_heads, group, n, hd)
        scores = float_dots(qg, keys, GGMLType.F16, isa=self.isa)[..., :n_keys]  # (n_kv_heads, group, n, n_keys)
        scores = scores.reshape(n_heads, n, n_keys) * np.float32(scale)      # (n_heads, n, n_keys)
        ago = (start + np.arange(n))[:, None] - np.arange(n_keys)[None, :]  # (n, n_keys): query - key position
        scores[:, (ago < 0) | ((ago >= window) if window else False)] = -np.inf
        probs = to_f16(softmax(scores, self.isa))                            # (n_heads, n, n_keys)
        probs = np.pad(probs, ((0, 0), (0, 0), (0, pad)))                     # (n_heads, n, n_keys+pad)
        pg = probs.reshape(n_kv_heads, group, n, n_keys + pad)
        out = float_dots(pg, values.swapaxes(-1, -2), GGMLType.F16, isa=self.isa)  # (n_kv_heads, group, n, hd)
        out = out.reshape(n_heads, n, head_dim).transpose(1, 0, 2)            # (n, n_heads, hd)
        return np.ascontiguousarray(out).reshape(n, n_heads * head_dim)       # (n, n_heads*hd)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """silu(gate) * up, with silu(g) = g / (1 + exp(-g)) and ggml's vector exp."""
        return gate / (np.float32(1.0) + ggml_expf(np.float32(0.0) - gate, self.isa)) * up

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """gelu(gate) * up as ggml_vec_geglu_f32 (GGML_GELU_FP16) computes it: 0 for gate <= -10,
        gate * up for gate >= 10, else the f16 GELU table at gate rounded to f16, times up."""
        table = gelu_table().astype(np.float32)[gate.astype(np.float16).view(np.uint16)]   # (n, f)
        return np.where(gate <= -10, np.float32(0), np.where(gate >= 10, gate, table) * up)
