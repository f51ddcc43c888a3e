"""Embeddings in llama-cpp-python's shape: ``embed`` and ``create_embedding``.

An embedding is the model's final hidden state (after the output norm: the vector
the output matrix turns into logits), pooled over a text's tokens as llama.cpp
pools them:

- ``mean``: the average over the tokens, summed in double and rounded once (llama.cpp
  takes it as an f32 matrix product with a column of 1/n; the two differ by an ulp or
  so in some components, so the tests compare it within 1e-6);
- ``last``: the last token's state, bit-identical to llama.cpp's (what a causal model
  has read the whole text into);
- ``cls``: the first token's; ``none``: every token's (a list of vectors per text).

Each text is evaluated afresh from position 0, as llama.cpp clears its cache per batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ArgumentError, ContextOverflowError

if TYPE_CHECKING:
    from .llama import Llama

POOLING = ("none", "mean", "cls", "last")  # numbered as llama.cpp's llama_pooling_type, 0 to 3


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """(n, dim) hidden states -> (dim,) as ``pooling`` says, or (n, dim) for "none"."""
    if pooling == "mean":
        return hidden.astype(np.float64).mean(axis=0).astype(np.float32)                     # (dim,)
    if pooling == "cls":
        return hidden[0]
    if pooling == "last":
        return hidden[-1]
    return hidden


def normalized(vector: np.ndarray) -> np.ndarray:
    """``vector`` over its Euclidean norm (a zero vector as it is), along the last axis, in float64."""
    norm = np.linalg.norm(vector.astype(np.float64), axis=-1, keepdims=True)
    return np.divide(vector, norm, out=vector.astype(np.float64), where=norm != 0)


def default_pooling(llm: "Llama") -> str:
    """The pooling the file declares (``{arch}.pooling_type``), else mean: one vector per text."""
    arch = llm.metadata.get("general.architecture", "llama")
    kind = llm.metadata.get(f"{arch}.pooling_type")
    return POOLING[kind] if isinstance(kind, int) and 0 < kind < len(POOLING) else "mean"


def embed(llm: "Llama", input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
          return_count: bool = False, pooling: str | None = None):
    """The embedding of a text (a list of floats), or of each text of a list (a list of those).

    truncate: keep the first n_ctx tokens of a longer text (else ContextOverflowError).
    normalize: divide each vector by its Euclidean norm.
    return_count: also return the number of tokens embedded, as ``(embeddings, count)``.
    pooling: "mean", "last", "cls" or "none" (default: ``default_pooling``).
    """
    pooling = default_pooling(llm) if pooling is None else pooling
    if pooling not in POOLING:
        raise ArgumentError(f"pooling must be one of {', '.join(POOLING)}, got {pooling!r}")
    texts = [input] if isinstance(input, str) else input
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence) \
            or not all(isinstance(t, str) for t in texts):
        raise TypeError("input must be a text or a list of texts")
    vectors, count = [], 0
    for text in texts:
        tokens = llm.tokenize(text, add_bos=True)
        if len(tokens) > llm.n_ctx:
            if not truncate:
                raise ContextOverflowError(f"{len(tokens)} tokens do not fit in n_ctx={llm.n_ctx}")
            tokens = tokens[:llm.n_ctx]
        if not tokens:
            raise ArgumentError("cannot embed an empty text with a model that adds no BOS")
        count += len(tokens)
        vector = pool(llm.eval_hidden(tokens), pooling)
        vectors.append((normalized(vector) if normalize else vector).tolist())
    out = vectors[0] if isinstance(input, str) else vectors
    return (out, count) if return_count else out


def create_embedding(llm: "Llama", input: str | Sequence[str], model: str | None = None,
                     pooling: str | None = None) -> dict:
    """OpenAI's embedding response: ``{"object": "list", "data": [{"object": "embedding", "embedding",
    "index"}], "model", "usage"}``, one entry per text."""
    texts = [input] if isinstance(input, str) else input
    vectors, count = embed(llm, texts, return_count=True, pooling=pooling)
    return {"object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "model": llm.path if model is None else model,
            "usage": {"prompt_tokens": count, "total_tokens": count}}
