"""The textbook backend: every op of the LLaMA forward pass in plain float32 NumPy.

Read this first. Each op is its equation and nothing else:

    matmul      y = x · Wᵀ             weights dequantised to float32, then one matrix product
    rms_norm    x / √(mean(x²) + ε) · g
    rope        rotate each pair (x₂ᵢ, x₂ᵢ₊₁), or (xᵢ, xᵢ₊d/2) in NEOX mode, by the angle
                position · base^(-2i/d) (· scale / factor_i)
    attention   softmax(q · kᵀ / √d + causal mask) · v, each query head reading its group's kv head
    swiglu      silu(gate) · up,        silu(g) = g · σ(g) = g / (1 + e⁻ᵍ)
    geglu       gelu(gate) · up,        gelu(g) = g/2 · (1 + tanh(√(2/π) · (g + 0.044715 g³)))

``engine.model`` calls these ops in order; ``Llama(..., backend="plain")`` runs a model on
them. The results are close to llama.cpp's but not equal: llama.cpp also rounds the
activations to the weight's 8-bit or 16-bit type before each product, keeps keys and
values in float16 (as here, in the cache ``engine.model`` owns) and sums in the orders of
its SIMD kernels. ``engine.exact`` is the exact path that does all of that; compare
the two op by op.
"""
from __future__ import annotations

import numpy as np

from . import quants
from .operands import Rope, Weight

ROWS_PER_STEP = 4096  # weight rows dequantised at a time, so no whole matrix is ever held in float32


def dequantized(w: Weight, rows) -> np.ndarray:
    """Rows ``rows`` (a slice or ids) of weight ``w`` as float32: (len(rows), w.n_in)."""
    return quants.dequantize(w.data[rows], w.type, w.n_in).astype(np.float32)


class PlainBackend:
    """The forward pass's ops as a student writes them: float32 throughout, one NumPy call per step."""

    name = "plain"

    def __init__(self, n_threads: int | None = None, isa: str = "avx2"):
        self.n_threads = n_threads  # NumPy decides its own threading; kept for a uniform interface
        self.isa = isa  # no kernel's order is mirrored here; kept for a uniform interface

    def prepare(self, weights) -> None:
        """Nothing to prepare: weights are dequantised as each product needs them."""

    def decoder(self, hp, weights) -> None:
        """None: the model runs these ops layer by layer."""
        return None

    def get_rows(self, w: Weight, ids: np.ndarray) -> np.ndarray:
        """The embedding lookup: rows ``ids`` of ``w``."""
        return dequantized(w, ids)                                           # (n, n_in)

    def matmul(self, w: Weight, x: np.ndarray) -> np.ndarray:
        """y = x · Wᵀ, a block of W's rows at a time."""
        y = np.empty((x.shape[0], w.n_out), np.float32)                      # (n, n_out)
        for r in range(0, w.n_out, ROWS_PER_STEP):
            rows = slice(r, r + ROWS_PER_STEP)
            y[:, rows] = x @ dequantized(w, rows).T                          # (n, n_in) · (n_in, rows) -> (n, rows)
        return y

    def matmuls(self, ws: tuple[Weight, ...], x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The products of one input with several weights: (n, n_in) -> one (n, w.n_out) per w."""
        return tuple(self.matmul(w, x) for w in ws)

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        """x / √(mean(x²) + ε) · g, per row."""
        mean_square = np.mean(x * x, axis=-1, keepdims=True)                 # (n, 1)
        return x / np.sqrt(mean_square + np.float32(eps)) * weight           # (n, d) · (d,) -> (n, d)

    def rope(self, x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
        """Rotate each pair of each head (x₂ᵢ, x₂ᵢ₊₁), or in NEOX mode (xᵢ, xᵢ₊d/2),
        by the angle position · θᵢ."""
        i = np.arange(rope.n_dims // 2)                                      # (d/2,) pair index
        theta = rope.freq_base ** (-2.0 * i / rope.n_dims) * rope.freq_scale  # (d/2,) radians per position
        if rope.freq_factors is not None:
            theta = theta / np.array(rope.freq_factors)                      # (d/2,) Llama 3 slows some pairs
        angle = positions[:, None] * theta[None, :]                          # (n, d/2)
        cos = np.cos(angle)[:, None, :].astype(np.float32)                   # (n, 1, d/2) one per head
        sin = np.sin(angle)[:, None, :].astype(np.float32)                   # (n, 1, d/2)
        first, second = rope.pairs()                                         # where each pair's two values lie
        x0, x1 = x[..., first], x[..., second]                               # (n, heads, d/2) each
        out = x.copy()                                                       # (n, heads, hd)
        out[..., first] = x0 * cos - x1 * sin                                # (n, heads, d/2)
        out[..., second] = x0 * sin + x1 * cos                               # (n, heads, d/2)
        return out

    def rope_qk(self, q: np.ndarray, k: np.ndarray, positions: np.ndarray, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
        """q and k, each rotated by ``rope``."""
        return self.rope(q, positions, rope), self.rope(k, positions, rope)

    def attention(self, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start: int,
                  scale: float, window: int = 0) -> np.ndarray:
        """softmax(q · kᵀ · scale + mask) · v for the n queries at positions [start, start + n).

        The cache holds every position up to start + n; query head h reads kv head h // group
        (grouped-query attention: several query heads share one key and value head). The mask
        hides the future, and with a ``window`` every key ``window`` or more positions back.
        """
        n, n_heads, head_dim = q.shape                                       # (n, n_heads, hd)
        n_keys = start + n                                                   # positions cached so far
        group = n_heads // k_cache.shape[0]                                  # query heads per kv head
        k = np.repeat(k_cache[:, :n_keys], group, axis=0).astype(np.float32)  # (n_heads, n_keys, hd)
        v = np.repeat(v_cache[:, :n_keys], group, axis=0).astype(np.float32)  # (n_heads, n_keys, hd)
        q = q.transpose(1, 0, 2)                                             # (n_heads, n, hd)
        scores = q @ k.transpose(0, 2, 1) * np.float32(scale)               # (n_heads, n, n_keys)
        ago = (start + np.arange(n))[:, None] - np.arange(n_keys)[None, :]  # (n, n_keys) query pos - key pos
        hidden = (ago < 0) | ((ago >= window) if window else False)          # (n, n_keys) future, or out of window
        scores[:, hidden] = -np.inf                                          # a token sees only its (recent) past
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))       # (n_heads, n, n_keys) softmax ...
        weights /= weights.sum(axis=-1, keepdims=True)                       # ... over the keys
        out = weights @ v                                                    # (n_heads, n, hd)
        return out.transpose(1, 0, 2).reshape(n, n_heads * head_dim)         # (n, n_heads * hd)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """silu(gate) · up, with silu(g) = g / (1 + e⁻ᵍ)."""
        with np.errstate(over="ignore"):  # e⁻ᵍ overflows to inf for g < -88, and g / inf = -0 is silu's limit
            return gate / (np.float32(1.0) + np.exp(-gate)) * up             # (n, ffn)

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """gelu(gate) · up, with GELU's tanh form."""
        inner = np.sqrt(2.0 / np.pi) * (gate + 0.044715 * gate ** 3)        # (n, ffn)
        return (0.5 * gate * (1.0 + np.tanh(inner)) * up).astype(np.float32)  # (n, ffn)
