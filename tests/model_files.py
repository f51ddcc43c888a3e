"""Synthetic models of each supported family for the tests, the benchmarks and ``scripts/make_model.py``.

``write_model`` writes a GGUF file with seeded random weights, any shape and family
(llama, qwen2, qwen3, gemma3, phi3), and the real llama2 vocabulary; ``quantize_model`` hands it
to llama.cpp's own quantiser so the result carries llama.cpp's real tensor-type mixtures (a Q4_0 file keeps a Q6_K
output tensor, Q4_K_M mixes Q4_K and Q6_K, ...).

    python scripts/make_model.py out.gguf --dim 256 --layers 2 --quant Q4_0
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np

from engine.gguf import read_gguf

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests" / "data" / "ggml-vocab-llama-spm.gguf"

# llama.cpp's "pure" quantisations: every matrix (output and embedding included) in the one named K type,
# from the llama-quantize mixture whose default type it is
PURE_K_TYPES = {"Q2_K_pure": "Q2_K", "Q3_K_pure": "Q3_K_M", "Q4_K_pure": "Q4_K_M", "Q5_K_pure": "Q5_K_M"}
QUANT_TYPES = ("F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "BF16",
               *PURE_K_TYPES)


@dataclass(frozen=True)
class ModelSpec:
    """The shape and seed of a synthetic model; ``ftype`` is how the unquantised file stores matrices."""
    arch: str = "llama"  # or "qwen2" (q, k, v biases), "qwen3" (q/k norms), "gemma3" (q/k norms, post norms, GELU,
    #                      a window), "phi3" (q, k, v fused in attn_qkv, gate and up in ffn_up)
    dim: int = 256
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn: int = 512
    n_ctx: int = 256
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    tied: bool = False
    rope_freqs: bool = False  # carry Llama 3.1's rope_freqs.weight (factor 8, original context n_ctx / 4)
    ftype: str = "f32"  # "f32" or "f16"
    seed: int = 0
    head_dim: int = 0  # attention.key_length; 0: dim / n_heads, written by no key
    window: int = 0    # gemma3's attention.sliding_window

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    def key(self) -> str:
        """A short stable name for caching files built from this spec."""
        blob = json.dumps(asdict(self), sort_keys=True) + Path(__file__).read_text()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


GEMMA3 = dict(arch="gemma3", dim=128, n_layers=7, n_heads=4, n_kv_heads=2, head_dim=64, ffn=256, n_ctx=1024,
              rms_eps=1e-6, rope_base=1e6, tied=True, window=64)
# a small file of each family but llama, as tests/test_families.py checks it against llama.cpp
FAMILY_SPECS = {
    "gemma3": GEMMA3,
    "qwen2": dict(arch="qwen2", dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=256, n_ctx=1024, rms_eps=1e-6,
                  rope_base=1e6),
    "qwen3": dict(arch="qwen3", dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, ffn=256, n_ctx=1024,
                  rms_eps=1e-6, rope_base=1e6, tied=True),
    "phi3": dict(arch="phi3", dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=256, n_ctx=1024),
}


def random_weights(spec: ModelSpec, n_vocab: int) -> dict[str, np.ndarray]:
    """Seeded weights in NumPy shape order (out_features, in_features), scaled so activations stay O(1)."""
    if (not spec.head_dim and spec.dim % spec.n_heads) or spec.n_heads % spec.n_kv_heads:
        raise ValueError(f"dim {spec.dim} must split into {spec.n_heads} heads, "
                         f"and those into {spec.n_kv_heads} kv groups")
    rng = np.random.default_rng(spec.seed)
    head_dim = spec.head_size
    q_dim, kv_dim = head_dim * spec.n_heads, head_dim * spec.n_kv_heads

    def matrix(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm(n: int = spec.dim) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    weights = {"token_embd.weight": rng.standard_normal((n_vocab, spec.dim)).astype(np.float32)}
    for i in range(spec.n_layers):
        blk = f"blk.{i}."
        weights[blk + "attn_norm.weight"] = norm()
        weights[blk + "attn_q.weight"] = matrix(q_dim, spec.dim)
        weights[blk + "attn_k.weight"] = matrix(kv_dim, spec.dim)
        weights[blk + "attn_v.weight"] = matrix(kv_dim, spec.dim)
        weights[blk + "attn_output.weight"] = matrix(spec.dim, q_dim)
        weights[blk + "ffn_norm.weight"] = norm()
        weights[blk + "ffn_gate.weight"] = matrix(spec.ffn, spec.dim)
        weights[blk + "ffn_up.weight"] = matrix(spec.ffn, spec.dim)
        weights[blk + "ffn_down.weight"] = matrix(spec.dim, spec.ffn)
        if spec.arch == "qwen2":
            for name, n in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
                weights[blk + name + ".bias"] = (0.5 * rng.standard_normal(n)).astype(np.float32)
        if spec.arch in ("qwen3", "gemma3"):
            weights[blk + "attn_q_norm.weight"] = norm(head_dim)
            weights[blk + "attn_k_norm.weight"] = norm(head_dim)
        if spec.arch == "gemma3":
            weights[blk + "post_attention_norm.weight"] = norm()
            weights[blk + "post_ffw_norm.weight"] = norm()
        if spec.arch == "phi3":  # the rows of q, k, v in one matrix, and of gate, up in another
            weights[blk + "attn_qkv.weight"] = np.concatenate([weights.pop(blk + f"attn_{x}.weight") for x in "qkv"])
            weights[blk + "ffn_up.weight"] = np.concatenate([weights.pop(blk + f"ffn_{x}.weight")
                                                             for x in ("gate", "up")])
    weights["output_norm.weight"] = norm()
    if spec.rope_freqs:
        weights["rope_freqs.weight"] = llama3_rope_factors(head_dim, spec.rope_base, spec.n_ctx // 4)
    if not spec.tied:
        weights["output.weight"] = 4.0 * matrix(n_vocab, spec.dim)
    return weights


def llama3_rope_factors(head_dim: int, base: float, original_ctx: int, factor: float = 8.0,
                        low_freq_factor: float = 1.0, high_freq_factor: float = 4.0) -> np.ndarray:
    """Llama 3.1's rope frequency factors, (head_dim/2,) float32: 1 for wavelengths shorter than
    original_ctx / high_freq_factor, ``factor`` for those longer than original_ctx / low_freq_factor,
    and a smooth blend between (the rule Meta's reference code and llama.cpp's converter apply)."""
    freqs = base ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (head_dim/2,)
    wavelen = 2 * np.pi / freqs
    smooth = (original_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blend = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < original_ctx / high_freq_factor, 1.0,
                       np.where(wavelen > original_ctx / low_freq_factor, factor, blend))
    return factors.astype(np.float32)


def add_hyperparameters(writer, spec: ModelSpec) -> None:
    """The ``{arch}.*`` metadata that describes a model of this shape."""
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.dim)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_rope_dimension_count(spec.head_size)
    writer.add_rope_freq_base(spec.rope_base)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.head_dim:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    if spec.window:
        writer.add_sliding_window(spec.window)


def write_model(path: str | os.PathLike, spec: ModelSpec = ModelSpec()) -> Path:
    """Write a synthetic GGUF of ``spec.arch`` with the llama2 vocabulary; 2-D weights as ``spec.ftype``,
    norms as F32."""

    if spec.ftype not in ("f32", "f16"):
        raise ValueError(f"ftype must be 'f32' or 'f16', got {spec.ftype!r}")
    vocab = read_gguf(VOCAB).metadata
    tokens = vocab["tokenizer.ggml.tokens"]
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), spec.arch)
    writer.add_name("llamanp synthetic")
    add_hyperparameters(writer, spec)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if spec.ftype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(vocab["tokenizer.ggml.scores"].tolist())
    writer.add_token_types(vocab["tokenizer.ggml.token_type"].tolist())
    writer.add_bos_token_id(vocab["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(vocab["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(vocab["tokenizer.ggml.unknown_token_id"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, w in random_weights(spec, len(tokens)).items():
        writer.add_tensor(name, w.astype(np.float16) if spec.ftype == "f16" and w.ndim == 2 else w)
    save(writer)
    return path


def quantize_model(src: str | os.PathLike, dst: str | os.PathLike, qtype: str, n_threads: int = 2,
                   allow_requantize: bool = False) -> Path:
    """Quantise ``src`` with llama.cpp's own ``llama_model_quantize`` (``qtype`` as in llama-quantize:
    Q4_0, Q4_K_M, ...;
    F16 and BF16 round every matrix to half precision or bfloat16; Q4_K_pure etc. are ``PURE_K_TYPES``).

    ``allow_requantize`` lets an already quantised ``src`` through (llama.cpp dequantises it first).
    """
    import llama_cpp

    if qtype not in QUANT_TYPES:
        raise ValueError(f"unknown quantisation {qtype!r}; choose from {', '.join(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{PURE_K_TYPES.get(qtype, qtype)}")
    params.pure = qtype in PURE_K_TYPES
    params.nthread = n_threads
    params.allow_requantize = allow_requantize
    quiet_llama_cpp()
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) failed with code {rc}")
    return Path(dst)


def quiet_llama_cpp() -> None:
    """Silence llama.cpp's logging (it writes to stderr from C)."""
    import llama_cpp

    global _log_callback
    _log_callback = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


_log_callback = None


def cached_model(cache_dir: str | os.PathLike, spec: ModelSpec = ModelSpec(), quant: str | None = None) -> Path:
    """Build (once) and return a synthetic model file in ``cache_dir``, optionally quantised by llama.cpp."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    base = cache_dir / f"synthetic-{spec.key()}-{spec.ftype}.gguf"
    if not base.exists():
        write_model(base.with_suffix(".tmp"), spec).rename(base)
    if quant is None:
        return base
    out = cache_dir / f"synthetic-{spec.key()}-{quant}.gguf"
    if not out.exists():
        quantize_model(base, out.with_suffix(".tmp"), quant).rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output GGUF path")
    for field, default in asdict(ModelSpec()).items():
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes")}.get(type(default), type(default))
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, default=default)
    p.add_argument("--quant", choices=QUANT_TYPES, help="quantise the result with llama.cpp")
    args = vars(p.parse_args(argv))
    out, quant = Path(args.pop("out")), args.pop("quant")
    spec = ModelSpec(**args)
    if quant is None:
        write_model(out, spec)
    else:
        tmp = out.with_suffix(".f32.tmp")
        write_model(tmp, spec)
        quantize_model(tmp, out, quant)
        tmp.unlink()
    print(out)


def write_tiny(path, arch="llama", drop=(), shapes=None, metadata=None, extra_tensors=None):
    """A one-layer 32-wide model with a 64-token vocabulary; ``drop``/``shapes`` break chosen tensors,
    ``metadata`` (strings or floats) adds keys, ``extra_tensors`` adds tensors as given."""
    dim, ffn, vocab = 32, 64, 64
    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": (vocab, dim), "output_norm.weight": (dim,), "output.weight": (vocab, dim),
        "blk.0.attn_norm.weight": (dim,), "blk.0.attn_q.weight": (dim, dim), "blk.0.attn_k.weight": (dim, dim),
        "blk.0.attn_v.weight": (dim, dim), "blk.0.attn_output.weight": (dim, dim),
        "blk.0.ffn_norm.weight": (dim,), "blk.0.ffn_gate.weight": (ffn, dim),
        "blk.0.ffn_up.weight": (ffn, dim), "blk.0.ffn_down.weight": (dim, ffn),
    } | (shapes or {})
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(32)
    writer.add_embedding_length(dim)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    for key, value in (metadata or {}).items():
        add_value(writer, key, value)
    arrays = {name: rng.standard_normal(shape).astype(np.float32)
              for name, shape in tensors.items() if name not in drop}
    for name, data in (arrays | (extra_tensors or {})).items():
        writer.add_tensor(name, data)
    save(writer)
    return path


def with_metadata(src, dst, extra: dict, drop: tuple[str, ...] = (), tensors: dict[str, np.ndarray] | None = None):
    """A copy of GGUF file ``src`` at ``dst`` with metadata ``extra`` (strings, floats, uint32 ints or
    lists of bools) added or replaced, without the tensors named in ``drop``, and with ``tensors`` added."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in extra:
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    types = {str: gguf.GGUFValueType.STRING, float: gguf.GGUFValueType.FLOAT32, int: gguf.GGUFValueType.UINT32,
             list: gguf.GGUFValueType.ARRAY}
    for name, value in extra.items():
        sub_type = gguf.GGUFValueType.BOOL if isinstance(value, list) else None
        writer.add_key_value(name, value, types[type(value)], sub_type)
    for tensor in reader.tensors:
        if tensor.name not in drop:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    for name, data in (tensors or {}).items():
        writer.add_tensor(name, data)
    save(writer)
    return dst


def add_value(writer, key: str, value: str | float) -> None:
    """Metadata ``key`` as a STRING for a str, else as a FLOAT32."""
    kind = gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.FLOAT32
    writer.add_key_value(key, value, kind)


def save(writer) -> None:
    """Write a ``gguf.GGUFWriter``'s header, metadata and tensors to its file, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
