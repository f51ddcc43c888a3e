"""A LLaMA-style decoder: hyperparameters and weights from a GGUF file, and the forward pass over a KV cache.

    x = embed(tokens)
    for each layer:
        x = x + Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x))
        x = x + W_down · (silu(W_gate · norm(x)) * (W_up · norm(x)))
    logits = W_out · norm(x)

Other families change a few steps of it, as llama.cpp builds them; ``FAMILIES`` lists
each one's switches side by side, and the one decoder below consults them:

    family   rope   gate  gate in up  q/k norm  post norms  embed x sqrt(dim)  scale q  sliding window
    llama    norm   silu  no          no        no          no                 no       no
    qwen2    neox   silu  no          no        no          no                 no       no
    qwen3    neox   silu  no          yes       no          no                 no       no
    gemma3   neox   gelu  no          yes       yes         yes                yes      5 of 6 layers
    phi3     neox   silu  yes         no        no          no                 yes      no

Biases on q, k and v (Qwen2's) are added wherever the file has them, as llama.cpp adds them;
a fused attn_qkv (Phi-3's) is read as its q, k and v row blocks, in any family, as llama.cpp reads it.

Every op comes from a backend (``engine.backends``: the textbook ``engine.plain``, or the exact
``engine.exact`` and its compiled twin ``engine.compiled``); the KV cache is stored in float16 as llama.cpp stores it.
A backend may also offer a decoder that runs the layer loop for one decoded row in one call (the
compiled one does, ``kernels.decoder``), with the loop's bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from .errors import ModelError
from .gguf import GGUFFile, ValueType
from .isa import ISAS
from .operands import Rope, Weight
from .quant_dots import MATRIX_TYPES
from .quants import GGMLType



@dataclass(frozen=True)
class Family:
    """Where an architecture's decoder differs from LLaMA's (llama.cpp's src/models/<name>.cpp)."""
    neox: bool          # RoPE rotates (x[i], x[i + n/2]) rather than adjacent pairs
    gelu: bool          # the feed-forward gates with GELU (tanh form) rather than SiLU
    qk_norm: bool       # each q and k head is RMS-normed (attn_q_norm, attn_k_norm) before RoPE
    post_norms: bool    # the attention and feed-forward outputs are RMS-normed before each residual add
    embed_scale: bool   # the embeddings are multiplied by sqrt(dim)
    scale_q: bool       # q rather than q·k is multiplied by the attention scale (after RoPE)
    gate_in_up: bool    # ffn_up holds the gate's rows, then the up rows; there is no ffn_gate
    swa_period: int     # 0, or every this many layers all but the last attend over a sliding window


FAMILIES = {
    "llama": Family(neox=False, gelu=False, qk_norm=False, post_norms=False, embed_scale=False, scale_q=False,
                    gate_in_up=False, swa_period=0),
    "qwen2": Family(neox=True, gelu=False, qk_norm=False, post_norms=False, embed_scale=False, scale_q=False,
                    gate_in_up=False, swa_period=0),
    "qwen3": Family(neox=True, gelu=False, qk_norm=True, post_norms=False, embed_scale=False, scale_q=False,
                    gate_in_up=False, swa_period=0),
    "gemma3": Family(neox=True, gelu=True, qk_norm=True, post_norms=True, embed_scale=True, scale_q=True,
                     gate_in_up=False, swa_period=6),
    # llama.cpp reads Phi-3's attention.sliding_window but disables the window (swa_period 0 ignores it)
    "phi3": Family(neox=True, gelu=False, qk_norm=False, post_norms=False, embed_scale=False, scale_q=True,
                   gate_in_up=True, swa_period=0),
}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)
SWA_FREQ_BASE = 10000.0   # llama.cpp's rope base of sliding-window layers when the file names none
GEMMA3_27B_LAYERS = 62    # llama.cpp scales this Gemma 3's queries by 1/sqrt(dim / heads), not 1/sqrt(head size)
MAX_LAYERS = 512          # llama.cpp's LLAMA_MAX_LAYERS
MAX_WIDTH = 1 << 20       # widest embedding or feed-forward accepted, 20x the largest released LLaMA's
UINT32_MAX = 2**32 - 1    # llama.cpp holds sizes such as the training context as uint32
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest positive normal float32


@dataclass(frozen=True)
class HParams:
    """The shape of a model, read from its GGUF metadata."""
    arch: str
    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    n_ctx_train: int
    rms_eps: float
    rope: Rope
    attn_scale: float                 # what q·k (or, with Family.scale_q, q) is multiplied by
    windows: tuple[int, ...] = ()     # per layer: 0, or how many positions its sliding window spans
    rope_swa: Rope | None = None      # the RoPE of the sliding-window layers

    @property
    def family(self) -> Family:
        return FAMILIES[self.arch]

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    def window(self, layer: int) -> int:
        """0, or the sliding window of ``layer``."""
        return self.windows[layer] if self.windows else 0

    def layer_rope(self, layer: int) -> Rope:
        return self.rope_swa if self.window(layer) else self.rope

    def switches(self) -> str:
        """The family and what its switches make of this model, in words (for ``llamanp info``)."""
        f = self.family
        words = [f"{'neox' if f.neox else 'norm'} rope (base {self.rope.freq_base:g})",
                 f"{'gelu' if f.gelu else 'silu'} gate", f"head size {self.head_dim}"]
        words += ["gate and up in one ffn_up"] * f.gate_in_up
        words += ["q/k norm"] * f.qk_norm + ["post-attention and post-ffn norms"] * f.post_norms
        words += ["embeddings x sqrt(dim)"] * f.embed_scale + ["q x attention scale"] * f.scale_q
        n_windowed = sum(w > 0 for w in self.windows)
        if n_windowed:
            words.append(f"sliding window {max(self.windows)} on {n_windowed} of {self.n_layers} layers "
                         f"(rope base {self.rope_swa.freq_base:g})")
        return f"{self.arch}: {', '.join(words)}"

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> "HParams":
        """Read and range-check every hyperparameter, so a bad file fails here with ModelError,
        before anything is allocated for it."""
        meta = gguf.metadata

        def one_of(name: str, allowed: tuple[str, ...], what: str, default: str | None = None) -> str:
            """String metadata ``name`` (or ``default``), one of ``allowed``."""
            value = meta.get(name, default)
            if gguf.value_types.get(name, ValueType.STRING) != ValueType.STRING or value not in allowed:
                raise ModelError(f"{gguf.path}: {what} {_describe(gguf, name)} is not supported; "
                                 f"supported: {', '.join(allowed)}")
            return value

        arch = one_of("general.architecture", SUPPORTED_ARCHITECTURES, "architecture")
        family = FAMILIES[arch]

        def get(key: str, lo, hi, default=None, kind=int):
            """Metadata ``{arch}.{key}`` (or ``default``) within [lo, hi], of the one type llama.cpp
            reads it as: UINT32 for kind int, FLOAT32 for kind float."""
            name = f"{arch}.{key}"
            if name not in meta:
                if default is None:
                    raise ModelError(f"{gguf.path}: metadata {name} is missing")
                return default
            expected = ValueType.UINT32 if kind is int else ValueType.FLOAT32
            if gguf.value_types[name] != expected:
                raise ModelError(f"{gguf.path}: metadata {name} must be {expected.name}, as llama.cpp reads it; "
                                 f"got {_describe(gguf, name)}")
            if not lo <= meta[name] <= hi:  # NaN fails too
                raise ModelError(f"{gguf.path}: metadata {name} = {meta[name]} is outside [{lo}, {hi}]")
            return kind(meta[name])

        embd = gguf.tensors.get("token_embd.weight")
        if embd is None:
            raise ModelError(f"{gguf.path}: tensor 'token_embd.weight' is missing")
        dim = get("embedding_length", 1, MAX_WIDTH)
        n_layers = get("block_count", 1, MAX_LAYERS)
        n_heads = get("attention.head_count", 1, dim)
        n_kv_heads = get("attention.head_count_kv", 1, n_heads, default=n_heads)
        if n_heads % n_kv_heads:
            raise ModelError(f"{gguf.path}: head_count {n_heads} must split into head_count_kv {n_kv_heads} groups")
        if f"{arch}.attention.key_length" not in meta and dim % n_heads:
            raise ModelError(f"{gguf.path}: embedding_length {dim} must split into head_count {n_heads} heads")
        head_dim = get("attention.key_length", 1, MAX_WIDTH, default=dim // n_heads)
        if get("attention.value_length", 1, MAX_WIDTH, default=head_dim) != head_dim:
            raise ModelError(f"{gguf.path}: attention.value_length must equal attention.key_length {head_dim}")
        rope_dims = get("rope.dimension_count", 1, head_dim, default=head_dim)
        if rope_dims != head_dim or rope_dims % 2:  # llama.cpp: all of a head rotates, in pairs
            raise ModelError(f"{gguf.path}: rope.dimension_count {rope_dims} must equal the head size {head_dim}, "
                             "an even number")
        scaling = one_of(f"{arch}.rope.scaling.type", ("none", "linear"), "rope scaling", default="linear")
        # the factor under the new key, else under the old one, as llama.cpp reads it; 0 means none,
        # and so does the type "none", whatever the factor
        factor_key = "rope.scaling.factor" if f"{arch}.rope.scaling.factor" in meta else "rope.scale_linear"
        factor = get(factor_key, 0.0, FLOAT32_MAX, default=0.0, kind=float)
        freq_scale = float(np.float32(1.0) / np.float32(factor)) if factor and scaling == "linear" else 1.0
        attn_factor = get("rope.scaling.attn_factor", 0.0, FLOAT32_MAX, default=1.0, kind=float)
        if attn_factor != 1.0:  # it would scale every cos and sin
            raise ModelError(f"{gguf.path}: rope.scaling.attn_factor {attn_factor} is not supported; supported: 1")
        if get("final_logit_softcapping", 0.0, FLOAT32_MAX, default=0.0, kind=float):
            raise ModelError(f"{gguf.path}: final_logit_softcapping is not supported")
        # llama.cpp reads Llama 3's rope factors for the llama family only
        factors = _rope_freq_factors(gguf, rope_dims) if arch == "llama" else None
        rope = Rope(rope_dims, get("rope.freq_base", FLOAT32_TINY, FLOAT32_MAX, default=10000.0, kind=float),
                    freq_scale, factors, family.neox)
        window = get("attention.sliding_window", 0, UINT32_MAX, default=0) if family.swa_period else 0
        period = get("attention.sliding_window_pattern", 0, MAX_LAYERS, default=family.swa_period) if window else 0
        # llama.cpp's set_swa_pattern: all but the last layer of every `period` slide; period 0: every layer
        windows = tuple(window if period == 0 or i % period < period - 1 else 0 for i in range(n_layers))
        rope_swa = Rope(rope_dims, get("rope.freq_base_swa", FLOAT32_TINY, FLOAT32_MAX, default=SWA_FREQ_BASE,
                                       kind=float), 1.0, None, family.neox) if window else None
        scale_dim = dim // n_heads if arch == "gemma3" and n_layers == GEMMA3_27B_LAYERS else head_dim
        return cls(
            arch=arch,
            n_vocab=_n_vocab(gguf, embd),
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn=get("feed_forward_length", 1, MAX_WIDTH),
            n_ctx_train=get("context_length", 1, UINT32_MAX),
            rms_eps=get("attention.layer_norm_rms_epsilon", 0.0, FLOAT32_MAX, kind=float),
            rope=rope,
            attn_scale=float(np.float32(1.0) / np.sqrt(np.float32(scale_dim))),
            windows=windows if window else (),
            rope_swa=rope_swa,
        )


def _n_vocab(gguf: GGUFFile, embd) -> int:
    """The vocabulary size: the token list's length, as llama.cpp takes it (token_embd.weight must then
    have that many rows), or for a file without a vocabulary the embedding's rows."""
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):
        return len(tokens)
    return embd.dims[1] if len(embd.dims) == 2 else 0


def _describe(gguf: GGUFFile, name: str) -> str:
    """Metadata ``name``'s type and value for an error message; an array by its length only."""
    vtype = gguf.value_types.get(name)
    if vtype is None:
        return "nothing (the key is missing)"
    if vtype == ValueType.ARRAY:
        return f"an array of {len(gguf.metadata[name])}"
    return f"{vtype.name} {gguf.metadata[name]!r:.60}"


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
    q_bias: np.ndarray | None = None          # (n_heads * head_dim,), where the file has them
    k_bias: np.ndarray | None = None          # (kv_dim,)
    v_bias: np.ndarray | None = None          # (kv_dim,)
    q_norm: np.ndarray | None = None          # (head_dim,), with Family.qk_norm
    k_norm: np.ndarray | None = None          # (head_dim,)
    attn_post_norm: np.ndarray | None = None  # (dim,), with Family.post_norms
    ffn_post_norm: np.ndarray | None = None   # (dim,)

    @property
    def qkv(self) -> tuple[Weight, Weight, Weight]:
        """The three products attention takes of the same normed input."""
        return self.wq, self.wk, self.wv

    @property
    def qkv_bias(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        return self.q_bias, self.k_bias, self.v_bias

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
            if info.type not in MATRIX_TYPES:
                raise ModelError(f"{gguf.path}: tensor {name!r} is {info.type.name}, a type llamanp cannot multiply; "
                                 f"supported: {', '.join(t.name for t in sorted(MATRIX_TYPES))}")
            return Weight(name, info.type, n_in, n_out, gguf.tensor(name))

        def vector(name: str, n: int = hp.dim) -> np.ndarray:
            return _vector(gguf, name, n)

        def row_blocks(name: str, sizes: tuple[int, ...]) -> tuple[Weight, ...]:
            """A fused matrix as the consecutive blocks of ``sizes`` rows that llama.cpp views in its one
            product: each output sums on its own, so the blocks' products are the same bits."""
            whole = matrix(name, hp.dim, sum(sizes))
            ends = np.cumsum(sizes)                                          # (len(sizes),)
            parts = tuple(Weight(f"{name}[{end - n}:{end}]", whole.type, whole.n_in, n, whole.data[end - n:end])
                          for n, end in zip(sizes, ends))
            if any(part.repacked(isa) != whole.repacked(isa) for part in parts for isa in ISAS):  # kernel differs
                raise ModelError(f"{gguf.path}: tensor {name!r} ({whole.type.name}) splits into blocks of "
                                 f"{list(sizes)} rows, not all multiples of 8; not supported")
            return parts

        def projections(i: int) -> dict:
            """Layer i's q, k, v, gate and up matrices: from attn_qkv where the file fuses them, and from
            ffn_up's two halves (gate first, as ggml_swiglu splits it) in a family that fuses those."""
            blk = f"blk.{i}."
            if blk + "attn_qkv.weight" in gguf.tensors:
                qkv = row_blocks(blk + "attn_qkv.weight", (q_dim, hp.kv_dim, hp.kv_dim))
            else:
                qkv = (matrix(blk + "attn_q.weight", hp.dim, q_dim), matrix(blk + "attn_k.weight", hp.dim, hp.kv_dim),
                       matrix(blk + "attn_v.weight", hp.dim, hp.kv_dim))
            if hp.family.gate_in_up:
                gate_up = row_blocks(blk + "ffn_up.weight", (hp.ffn, hp.ffn))
            else:
                gate_up = (matrix(blk + "ffn_gate.weight", hp.dim, hp.ffn),
                           matrix(blk + "ffn_up.weight", hp.dim, hp.ffn))
            return dict(zip(("wq", "wk", "wv", "w_gate", "w_up"), qkv + gate_up))

        def extras(i: int) -> dict:
            """Layer i's q, k and v biases where the file has them, and the family's extra norms."""
            family, blk = hp.family, f"blk.{i}."
            sizes = dict(q=hp.n_heads * hp.head_dim, k=hp.kv_dim, v=hp.kv_dim)
            biases = {f"{x}_bias": vector(f"{blk}attn_{x}.bias", n) for x, n in sizes.items()
                      if f"{blk}attn_{x}.bias" in gguf.tensors}
            qk = dict(q_norm=vector(blk + "attn_q_norm.weight", hp.head_dim),
                      k_norm=vector(blk + "attn_k_norm.weight", hp.head_dim)) if family.qk_norm else {}
            post = dict(attn_post_norm=vector(blk + "post_attention_norm.weight"),
                        ffn_post_norm=vector(blk + "post_ffw_norm.weight")) if family.post_norms else {}
            return biases | qk | post

        q_dim = hp.n_heads * hp.head_dim
        layers = tuple(
            Layer(
                attn_norm=vector(f"blk.{i}.attn_norm.weight"),
                wo=matrix(f"blk.{i}.attn_output.weight", q_dim, hp.dim),
                ffn_norm=vector(f"blk.{i}.ffn_norm.weight"),
                w_down=matrix(f"blk.{i}.ffn_down.weight", hp.ffn, hp.dim),
                **projections(i),
                **extras(i),
            )
            for i in range(hp.n_layers)
        )
        # Phi-3's longrope factors would rescale RoPE's frequencies by the context size
        for unsupported in ("output.bias", "blk.0.attn_qkv.bias", "blk.0.attn_output.bias",
                            "rope_factors_long.weight", "rope_factors_short.weight"):
            if unsupported in gguf.tensors:
                raise ModelError(f"{gguf.path}: tensor {unsupported!r} is not supported")
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
        raise ModelError(f"{gguf.path}: tensor {name!r} must be an {' or '.join(t.name for t in types)} vector of {n}, "
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


    @classmethod
    def split(cls, hp: HParams, n_ctx: int, n_seqs: int) -> list["KVCache"]:
        """One KV cache holding ``n_seqs`` sequences of up to ``n_ctx`` positions: one allocation,
        (n_seqs, n_layers, n_kv_heads, n_ctx, head_dim) each of keys and values, and a ``KVCache``
        viewing each sequence's part."""
        shape = (n_seqs, hp.n_layers, hp.n_kv_heads, n_ctx, hp.head_dim)
        k, v = np.zeros(shape, np.float16), np.zeros(shape, np.float16)
        parts = []
        for s in range(n_seqs):
            part = cls.__new__(cls)
            part.k, part.v, part.n_ctx = k[s], v[s], n_ctx
            parts.append(part)
        return parts


class Span(NamedTuple):
    """One sequence's rows in a batch, consecutive: positions [start, start + n) of its own ``cache``."""
    cache: KVCache
    start: int
    n: int


class Model:
    """A loaded LLaMA: hyperparameters, in-place weights, and the forward pass."""

    def __init__(self, gguf: GGUFFile, backend):
        self.hp = HParams.from_gguf(gguf)
        self.weights = Weights.from_gguf(gguf, self.hp)
        self.backend = backend
        backend.prepare(self.weights)  # e.g. regroup weights for the compiled kernels, as llama.cpp repacks at load
        self.decoder = backend.decoder(self.hp, self.weights)  # None, or every layer for one row in one call

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache, all_logits: bool) -> np.ndarray:
        """Evaluate ``tokens`` at positions [start, start + n) into ``cache``; logits of every position, or the last."""
        return self.logits(self.hidden(tokens, start, cache, all_rows=all_logits))  # (n or 1, n_vocab)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """W_out · h: final hidden states to logits, (n, dim) -> (n, n_vocab)."""
        return self.backend.matmul(self.weights.output, hidden)

    def hidden(self, tokens: np.ndarray, start: int, cache: KVCache, all_rows: bool) -> np.ndarray:
        """The final hidden state (after the output norm) of every position, or of the last: what the
        output matrix turns into logits, and what llama.cpp hands out as embeddings."""
        rows = slice(None) if all_rows else slice(-1, None)
        return self.batch_hidden(tokens, (Span(cache, start, len(tokens)),), rows)  # (n or 1, dim)

    def batch_hidden(self, tokens: np.ndarray, spans: Sequence[Span], rows) -> np.ndarray:
        """Evaluate several sequences in one pass: ``tokens`` holds each span's tokens in turn, each
        sequence at its own positions into its own cache. Every matrix product takes all the rows at
        once (the weights stream once); attention runs per sequence. The final hidden states of
        ``rows`` (indices or a slice into ``tokens``): (len(rows), dim)."""
        hp, w, ops = self.hp, self.weights, self.backend
        positions = np.concatenate([np.arange(s.start, s.start + s.n) for s in spans])  # (n,)
        x = ops.get_rows(w.token_embd, tokens)                              # (n, dim)
        if hp.family.embed_scale:
            x = x * np.sqrt(np.float32(hp.dim))                             # (n, dim)
        if self.decoder is not None and len(spans) == 1 and len(tokens) == 1:  # decode: the loop below, compiled
            x = self.decoder.decode(x, spans[0].cache, spans[0].start)     # (1, dim)
        else:
            for i, layer in enumerate(w.layers):
                x = x + self.post_norm(layer.attn_post_norm, self.attention(layer, i, x, spans, positions))
                x = x + self.post_norm(layer.ffn_post_norm, self.feed_forward(layer, x))
        return ops.rms_norm(np.ascontiguousarray(x[rows]), w.output_norm, hp.rms_eps)  # (len(rows), dim)

    def post_norm(self, weight: np.ndarray | None, y: np.ndarray) -> np.ndarray:
        """A block's output as the residual stream takes it: RMS-normed where the family norms it."""
        return y if weight is None else self.backend.rms_norm(y, weight, self.hp.rms_eps)

    def attention(self, layer: Layer, index: int, x: np.ndarray, spans: Sequence[Span],
                  positions: np.ndarray) -> np.ndarray:
        """Self-attention of each sequence over its cache (or its sliding window), after writing its
        rows' keys and values into it; ``positions`` (n,): each row's position in its sequence."""
        hp, ops = self.hp, self.backend
        n = x.shape[0]
        h = ops.rms_norm(x, layer.attn_norm, hp.rms_eps)                   # (n, dim)
        q, k, v = (y if b is None else y + b                                # (n, n_heads*hd), (n, kv_dim) x 2
                   for y, b in zip(ops.matmuls(layer.qkv, h), layer.qkv_bias))
        if layer.q_norm is not None:                                        # each head's q and k normed
            q = ops.rms_norm(q.reshape(n * hp.n_heads, hp.head_dim), layer.q_norm, hp.rms_eps)
            k = ops.rms_norm(k.reshape(n * hp.n_kv_heads, hp.head_dim), layer.k_norm, hp.rms_eps)
        q = q.reshape(n, hp.n_heads, hp.head_dim)                          # (n, n_heads, hd)
        k = k.reshape(n, hp.n_kv_heads, hp.head_dim)                       # (n, n_kv_heads, hd)
        v = v.reshape(n, hp.n_kv_heads, hp.head_dim)                       # (n, n_kv_heads, hd)
        q, k = ops.rope_qk(q, k, positions, hp.layer_rope(index))
        scale = np.float32(hp.attn_scale)
        if hp.family.scale_q:                                               # Gemma, Phi-3: q scaled, then q·k by 1
            q, scale = q * scale, np.float32(1.0)
        a, first = [], 0
        for cache, start, rows in spans:                                    # each sequence over its own cache
            span = slice(first, first + rows)
            cache.store(index, start, k[span], v[span])
            a.append(ops.attention(q[span], cache.k[index], cache.v[index], start, scale, hp.window(index)))
            first += rows
        return ops.matmul(layer.wo, a[0] if len(a) == 1 else np.concatenate(a))  # (n, dim)

    def feed_forward(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """SwiGLU (GEGLU where the family gates with GELU): W_down · (act(W_gate · norm(x)) * (W_up · norm(x)))."""
        ops = self.backend
        h = ops.rms_norm(x, layer.ffn_norm, self.hp.rms_eps)               # (n, dim)
        gate, up = ops.matmuls(layer.gate_up, h)                            # (n, ffn) each
        glu = ops.geglu if self.hp.family.gelu else ops.swiglu
        return ops.matmul(layer.w_down, glu(gate, up))                      # (n, dim)
