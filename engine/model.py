"""A LLaMA decoder: hyperparameters and weights from a GGUF file, and the forward pass over a KV cache.

    x = embed(tokens)
    for each layer:
        x = x + Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
        x = x + W_down · (silu(W_gate · norm(x)) * (W_up · norm(x)))
    logits = W_out · norm(x)

Every op comes from a backend (``engine.ggml_ops``) so a compiled one can stand in for
the NumPy reference; the KV cache is stored in float16 as llama.cpp stores it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelError
from .ggml_ops import Rope, Weight
from .gguf import GGUFFile
from .quants import GGMLType

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class HParams:
    """The shape of a LLaMA model, read from its GGUF metadata."""
    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    n_ctx_train: int
    rms_eps: float
    rope: Rope

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> "HParams":
        meta = gguf.metadata
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(f"{gguf.path}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

        def get(key: str, default=None, kind=int):
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise ModelError(f"{gguf.path}: metadata {arch}.{key} is missing")
            if isinstance(value, (list, np.ndarray)) or isinstance(value, str):
                raise ModelError(f"{gguf.path}: metadata {arch}.{key} must be a number, got {value!r}")
            return kind(value)

        embd = gguf.tensors.get("token_embd.weight")
        if embd is None:
            raise ModelError(f"{gguf.path}: tensor 'token_embd.weight' is missing")
        dim, n_heads = get("embedding_length"), get("attention.head_count")
        n_kv_heads = get("attention.head_count_kv", n_heads)
        if dim <= 0 or n_heads <= 0 or n_kv_heads <= 0 or dim % n_heads or n_heads % n_kv_heads:
            raise ModelError(f"{gguf.path}: embedding_length {dim} must split into head_count {n_heads} heads, "
                             f"and those into head_count_kv {n_kv_heads} groups")
        head_dim = dim // n_heads
        rope_dims = get("rope.dimension_count", head_dim)
        if not 0 < rope_dims <= head_dim or rope_dims % 2:
            raise ModelError(f"{gguf.path}: rope.dimension_count {rope_dims} must be even and at most the head size {head_dim}")
        scaling = meta.get(f"{arch}.rope.scaling.type", "linear")
        if scaling not in ("none", "linear"):
            raise ModelError(f"{gguf.path}: rope scaling {scaling!r} is not supported; supported: none, linear")
        # llama.cpp reads the factor whatever the type says, under the new key or the old one; "none" ignores it
        factor = get("rope.scaling.factor", get("rope.scale_linear", 0.0, float), float)
        if factor < 0:
            raise ModelError(f"{gguf.path}: rope scaling factor {factor} must not be negative")
        freq_scale = float(np.float32(1.0) / np.float32(factor)) if factor and scaling == "linear" else 1.0
        attn_factor = get("rope.scaling.attn_factor", 1.0, float)
        if attn_factor != 1.0:  # it would scale every cos and sin
            raise ModelError(f"{gguf.path}: rope.scaling.attn_factor {attn_factor} is not supported; supported: 1")
        hp = cls(
            n_vocab=embd.dims[1] if len(embd.dims) == 2 else 0,
            dim=dim,
            n_layers=get("block_count"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            ffn=get("feed_forward_length"),
            n_ctx_train=get("context_length"),
            rms_eps=get("attention.layer_norm_rms_epsilon", kind=float),
            rope=Rope(rope_dims, get("rope.freq_base", 10000.0, float), freq_scale, _rope_freq_factors(gguf, rope_dims)),
        )
        if hp.n_layers <= 0 or hp.ffn <= 0 or hp.n_ctx_train <= 0:
            raise ModelError(f"{gguf.path}: block_count, feed_forward_length and context_length must be positive")
        return hp


def _rope_freq_factors(gguf: GGUFFile, rope_dims: int) -> tuple[float, ...] | None:
    """Llama 3's per-pair rope frequency factors (the ``rope_freqs.weight`` tensor), if the file has them."""
    if "rope_freqs.weight" not in gguf.tensors:
        return None
    # F32 only: llama.cpp's rope asserts it
    factors = _vector(gguf, "rope_freqs.weight", rope_dims // 2, (GGMLType.F32,))   # (rope_dims/2,)
    if not np.all(np.isfinite(factors) & (factors > 0)):
        raise ModelError(f"{gguf.path}: tensor 'rope_freqs.weight' must hold positive finite factors")
    return tuple(float(f) for f in factors)


@dataclass(frozen=True)
class Layer:
    attn_norm: np.ndarray  # (dim,)
    wq: Weight             # dim -> n_heads * head_dim
    wk: Weight             # dim -> kv_dim
    wv: Weight             # dim -> kv_dim
    wo: Weight             # n_heads * head_dim -> dim
    ffn_norm: np.ndarray   # (dim,)
    w_gate: Weight         # dim -> ffn
    w_up: Weight           # dim -> ffn
    w_down: Weight         # ffn -> dim

    @property
    def qkv(self) -> tuple[Weight, Weight, Weight]:
        """The three products attention takes of the same normed input."""
        return self.wq, self.wk, self.wv

    @property
    def gate_up(self) -> tuple[Weight, Weight]:
        """The two products the feed-forward takes of the same normed input."""
        return self.w_gate, self.w_up


@dataclass(frozen=True)
class Weights:
    token_embd: Weight     # (n_vocab rows of dim)
    layers: tuple[Layer, ...]
    output_norm: np.ndarray  # (dim,)
    output: Weight         # dim -> n_vocab; token_embd itself when the file ties them

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, hp: HParams) -> "Weights":
        def matrix(name: str, n_in: int, n_out: int) -> Weight:
            info = _tensor_info(gguf, name)
            if info.dims != (n_in, n_out):
                raise ModelError(f"{gguf.path}: tensor {name!r} has shape {list(info.dims)}, expected {[n_in, n_out]}")
            return Weight(name, info.type, n_in, n_out, gguf.tensor(name))

        def vector(name: str) -> np.ndarray:
            return _vector(gguf, name, hp.dim)

        q_dim = hp.n_heads * hp.head_dim
        layers = tuple(
            Layer(
                attn_norm=vector(f"blk.{i}.attn_norm.weight"),
                wq=matrix(f"blk.{i}.attn_q.weight", hp.dim, q_dim),
                wk=matrix(f"blk.{i}.attn_k.weight", hp.dim, hp.kv_dim),
                wv=matrix(f"blk.{i}.attn_v.weight", hp.dim, hp.kv_dim),
                wo=matrix(f"blk.{i}.attn_output.weight", q_dim, hp.dim),
                ffn_norm=vector(f"blk.{i}.ffn_norm.weight"),
                w_gate=matrix(f"blk.{i}.ffn_gate.weight", hp.dim, hp.ffn),
                w_up=matrix(f"blk.{i}.ffn_up.weight", hp.dim, hp.ffn),
                w_down=matrix(f"blk.{i}.ffn_down.weight", hp.ffn, hp.dim),
            )
            for i in range(hp.n_layers)
        )
        token_embd = matrix("token_embd.weight", hp.dim, hp.n_vocab)
        output = matrix("output.weight", hp.dim, hp.n_vocab) if "output.weight" in gguf.tensors else token_embd
        return cls(token_embd, layers, vector("output_norm.weight"), output)


def _tensor_info(gguf: GGUFFile, name: str):
    info = gguf.tensors.get(name)
    if info is None:
        raise ModelError(f"{gguf.path}: tensor {name!r} is missing")
    return info


def _vector(gguf: GGUFFile, name: str, n: int, types=(GGMLType.F32, GGMLType.F16)) -> np.ndarray:
    """A 1-D tensor of ``n`` floats stored as one of ``types``, as float32: (n,)."""
    info = _tensor_info(gguf, name)
    if info.dims != (n,) or info.type not in types:
        raise ModelError(f"{gguf.path}: tensor {name!r} must be a vector of {n} {'/'.join(t.name for t in types)}, "
                         f"got {info.type.name} {list(info.dims)}")
    return gguf.tensor(name).astype(np.float32)


class KVCache:
    """Keys and values of every evaluated position, float16, (n_layers, n_kv_heads, n_ctx, head_dim) each."""

    def __init__(self, hp: HParams, n_ctx: int):
        shape = (hp.n_layers, hp.n_kv_heads, n_ctx, hp.head_dim)
        self.k = np.zeros(shape, np.float16)
        self.v = np.zeros(shape, np.float16)
        self.n_ctx = n_ctx

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write (n, n_kv_heads, head_dim) keys and values at positions [start, start + n), rounding to f16."""
        n = k.shape[0]
        self.k[layer, :, start:start + n] = k.transpose(1, 0, 2)
        self.v[layer, :, start:start + n] = v.transpose(1, 0, 2)


class Model:
    """A loaded LLaMA: hyperparameters, in-place weights, and the forward pass."""

    def __init__(self, gguf: GGUFFile, backend):
        self.hp = HParams.from_gguf(gguf)
        self.weights = Weights.from_gguf(gguf, self.hp)
        self.backend = backend
        backend.prepare(self.weights)  # e.g. regroup weights for the compiled kernels, as llama.cpp repacks at load

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache, all_logits: bool) -> np.ndarray:
        """Evaluate ``tokens`` at positions [start, start + n) into ``cache``; logits of every position, or the last."""
        hp, w, ops = self.hp, self.weights, self.backend
        positions = np.arange(start, start + len(tokens))                  # (n,)
        x = ops.get_rows(w.token_embd, tokens)                              # (n, dim)
        for i, layer in enumerate(w.layers):
            x = x + self.attention(layer, i, x, positions, cache)           # (n, dim)
            x = x + self.feed_forward(layer, x)                             # (n, dim)
        if not all_logits:
            x = x[-1:]                                                       # (1, dim)
        x = ops.rms_norm(x, w.output_norm, hp.rms_eps)
        return ops.matmul(w.output, x)                                      # (n or 1, n_vocab)

    def attention(self, layer: Layer, index: int, x: np.ndarray, positions: np.ndarray, cache: KVCache) -> np.ndarray:
        """Self-attention over the cache, after writing this batch's keys and values into it."""
        hp, ops = self.hp, self.backend
        n = x.shape[0]
        h = ops.rms_norm(x, layer.attn_norm, hp.rms_eps)                   # (n, dim)
        q, k, v = ops.matmuls(layer.qkv, h)                                 # (n, n_heads*hd), (n, kv_dim) x 2
        q = q.reshape(n, hp.n_heads, hp.head_dim)                          # (n, n_heads, hd)
        k = k.reshape(n, hp.n_kv_heads, hp.head_dim)                       # (n, n_kv_heads, hd)
        v = v.reshape(n, hp.n_kv_heads, hp.head_dim)                       # (n, n_kv_heads, hd)
        q = ops.rope(q, positions, hp.rope)
        k = ops.rope(k, positions, hp.rope)
        cache.store(index, int(positions[0]), k, v)
        scale = np.float32(1.0) / np.sqrt(np.float32(hp.head_dim))
        a = ops.attention(q, cache.k[index], cache.v[index], int(positions[0]), scale)  # (n, n_heads*hd)
        return ops.matmul(layer.wo, a)                                      # (n, dim)

    def feed_forward(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """SwiGLU: W_down · (silu(W_gate · norm(x)) * (W_up · norm(x)))."""
        ops = self.backend
        h = ops.rms_norm(x, layer.ffn_norm, self.hp.rms_eps)               # (n, dim)
        gate, up = ops.matmuls(layer.gate_up, h)                            # (n, ffn) each
        return ops.matmul(layer.w_down, ops.swiglu(gate, up))               # (n, dim)
