"""A synthetic model too large to hold in memory, written a tensor at a time.

``tests.model_files.write_model`` builds every tensor in memory before writing; for a
7B-parameter shape that is 27 GB of float32.  ``write_streamed`` writes the same kind of
file (a llama-family model with the llama2 vocabulary, matrices as f16, norms as f32)
holding one tensor at a time, so that building it needs well under 1 GB of memory;
llama.cpp's quantiser then reads it a tensor at a time too.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np

from tests.model_files import VOCAB, ModelSpec, add_hyperparameters, quantize_model

# the shape of llama-2-7b (its Q4_0 file is the one llama.clj's walkthrough runs)
LLAMA2_7B = ModelSpec(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn=11008, n_ctx=4096, ftype="f16")


def tensor_shapes(spec: ModelSpec, n_vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Names and NumPy shapes (out_features, in_features) of a llama-family model's tensors, in file order."""
    q_dim, kv_dim = spec.head_size * spec.n_heads, spec.head_size * spec.n_kv_heads
    yield "token_embd.weight", (n_vocab, spec.dim)
    for i in range(spec.n_layers):
        for name, shape in (("attn_norm", (spec.dim,)), ("attn_q", (q_dim, spec.dim)), ("attn_k", (kv_dim, spec.dim)),
                            ("attn_v", (kv_dim, spec.dim)), ("attn_output", (spec.dim, q_dim)),
                            ("ffn_norm", (spec.dim,)), ("ffn_gate", (spec.ffn, spec.dim)),
                            ("ffn_up", (spec.ffn, spec.dim)), ("ffn_down", (spec.dim, spec.ffn))):
            yield f"blk.{i}.{name}.weight", shape
    yield "output_norm.weight", (spec.dim,)
    yield "output.weight", (n_vocab, spec.dim)


def random_tensor(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Norms near 1 (f32); matrices N(0, 1/n_in) (f16), made a slab of rows at a time."""
    if len(shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    out = np.empty(shape, np.float16)
    for r in range(0, shape[0], 1024):
        out[r:r + 1024] = rng.standard_normal((min(1024, shape[0] - r), shape[1]), np.float32) / np.sqrt(shape[1])
    return out


def write_streamed(path: Path, spec: ModelSpec) -> Path:
    """Write a llama-family ``spec`` (no biases or extra norms) as an f16 GGUF, one tensor in memory at a time."""
    vocab = gguf.GGUFReader(VOCAB)
    tokens = vocab.fields["tokenizer.ggml.tokens"]
    writer = gguf.GGUFWriter(os.fspath(path), "llama")
    writer.add_name("llamanp synthetic (streamed)")
    add_hyperparameters(writer, spec)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for field in vocab.fields.values():  # the tokenizer as the vocabulary file stores it
        if field.name.startswith("tokenizer."):
            writer.add_key_value(field.name, field.contents(), field.types[0],
                                 field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    shapes = list(tensor_shapes(spec, len(tokens.data)))
    for name, shape in shapes:
        dtype = np.dtype(np.float16 if len(shape) == 2 else np.float32)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(spec.seed)
    for _, shape in shapes:
        writer.write_tensor_data(random_tensor(rng, shape))
    writer.close()
    return path


def cached_large_model(cache_dir: str | os.PathLike, spec: ModelSpec, quant: str) -> Path:
    """Build (once) ``spec`` quantised to ``quant`` by llama.cpp in ``cache_dir``; the f16 source is
    deleted after quantising, since it is several times the size of the result."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"streamed-{spec.key()}-{quant}.gguf"
    if not out.exists():
        source = write_streamed(cache_dir / f"streamed-{spec.key()}-f16.tmp", spec)
        try:
            quantize_model(source, out.with_suffix(".tmp"), quant).rename(out)
        finally:
            source.unlink()
    return out
