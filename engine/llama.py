"""``Llama``: a model file, a KV cache, and the logits of the tokens fed so far.

    with Llama("model.gguf") as llm:
        llm.update("The quick brown")      # BOS + tokens, evaluated into the cache
        llm.logits                         # (n_vocab,) float32, for the next token
        llm.update([fox_id])               # append one more token
        llm.update([dog_id], n_past=3)     # rewind to 3 cached tokens, then append
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ContextOverflowError, LlamaError
from .ggml_ops import BACKENDS
from .generate import Step, steps
from .gguf import read_gguf
from .model import KVCache, Model
from .models import resolve

BATCH = 512  # tokens evaluated per forward pass, like llama.cpp's default micro-batch


@dataclass(frozen=True)
class LlamaState:
    """A snapshot of the cache and logits, as ``save_state`` takes it and ``load_state`` restores it."""
    tokens: tuple[int, ...]  # the ids whose keys and values are cached, (n_past,)
    k: np.ndarray   # (n_layers, n_kv_heads, n_past, head_dim) float16
    v: np.ndarray
    logits: np.ndarray | None

    @property
    def n_past(self) -> int:
        return len(self.tokens)


def make_backend(name: str, n_threads: int | None):
    """The op backend called ``name``: "numpy", "cython" (compiled kernels) or "auto" (cython when built)."""
    if name == "auto":
        name = "cython" if _cython_backend() is not None else "numpy"
    if name == "cython":
        backend = _cython_backend()
        if backend is None:
            raise LlamaError("the cython backend is not built (run `pip install -e . --no-build-isolation`); "
                             "use backend='numpy'")
        return backend(n_threads)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from auto, cython, numpy")
    return BACKENDS[name](n_threads)


def _check_cache_fits(hp, n_ctx: int) -> None:
    """Refuse a KV cache larger than the machine's memory, rather than fail or swap later."""
    cache_bytes = 2 * hp.n_layers * hp.kv_dim * n_ctx * np.dtype(np.float16).itemsize
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if cache_bytes > memory:
        raise ValueError(f"n_ctx={n_ctx} needs a {cache_bytes / 2**30:.1f} GiB KV cache, "
                         f"more than this machine's {memory / 2**30:.1f} GiB of memory")


def _cython_backend():
    try:
        from kernels.backend import CythonBackend
    except ImportError:
        return None
    return CythonBackend


class Llama:
    """A LLaMA model with a KV cache: feed tokens or text, read the next token's logits."""

    def __init__(self, path: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None,
                 seed: int | None = None, backend: str = "auto"):
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
        path = resolve(path)  # a pulled model's name stands for its file
        self._gguf = read_gguf(path)
        try:
            self.model = Model(self._gguf, make_backend(backend, n_threads))
            self.hparams = self.model.hp
            self.n_ctx = self.model.hp.n_ctx_train if n_ctx is None else n_ctx
            if isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int) or self.n_ctx < 1:
                raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
            _check_cache_fits(self.model.hp, self.n_ctx)
            self.cache = KVCache(self.model.hp, self.n_ctx)
        except BaseException:
            self._gguf.close()
            raise
        self.path = os.fspath(path)
        self.n_threads = n_threads
        self.seed = seed
        self.n_past = 0
        self._cached: list[int] = []  # the token ids in the cache, len n_past
        self.n_evaluated = 0  # tokens run through the model since loading, across every call
        self._logits: np.ndarray | None = None

    # -- metadata and vocabulary

    @property
    def metadata(self) -> dict[str, Any]:
        return self._gguf.metadata

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    @cached_property
    def tokenizer(self):
        from .tokenizer import Tokenizer
        return Tokenizer.from_metadata(self.metadata)

    @property
    def bos(self) -> int | None:
        return self.tokenizer.bos

    @property
    def eos(self) -> int | None:
        return self.tokenizer.eos

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def untokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.untokenize(tokens, special=special)

    # -- evaluation

    @property
    def logits(self) -> np.ndarray:
        """The logits after the last evaluated token, float32 (n_vocab,)."""
        if self._logits is None:
            raise LlamaError("no logits yet: call update() with at least one token first")
        return self._logits

    def update(self, text_or_tokens: str | Sequence[int], n_past: int | None = None) -> None:
        """Append tokens (or text, tokenized; BOS only at position 0) to the cache, after rewinding it to ``n_past``."""
        start = self.n_past if n_past is None else n_past
        if not isinstance(start, (int, np.integer)) or not 0 <= start <= self.n_past:
            raise ValueError(f"n_past must be between 0 and the {self.n_past} cached tokens, got {n_past!r}")
        tokens = self._tokens(text_or_tokens, add_bos=start == 0)
        if not tokens:
            if n_past is not None and start != self.n_past:
                raise ValueError("rewinding needs at least one token to evaluate, so there are logits to read")
            return
        self._evaluate(tokens, int(start), all_logits=False)

    def get_logits(self, text_or_tokens: str | Sequence[int]) -> np.ndarray:
        """A fresh evaluation from position 0; the last position's logits."""
        self.update(text_or_tokens, n_past=0)
        return self.logits

    def eval_logits(self, tokens: Sequence[int], n_past: int = 0) -> np.ndarray:
        """Evaluate ``tokens`` after the first ``n_past`` cached ones (default: afresh from position 0);
        the logits of every position, (len(tokens), n_vocab)."""
        if not isinstance(n_past, (int, np.integer)) or not 0 <= n_past <= self.n_past:
            raise ValueError(f"n_past must be between 0 and the {self.n_past} cached tokens, got {n_past!r}")
        tokens = self._tokens(tokens, add_bos=False)
        if not tokens:
            raise ValueError("eval_logits needs at least one token")
        return self._evaluate(tokens, int(n_past), all_logits=True)

    @property
    def cached_tokens(self) -> list[int]:
        """The token ids whose keys and values are in the cache, in order (a copy)."""
        return list(self._cached)

    def _evaluate(self, tokens: list[int], start: int, all_logits: bool) -> np.ndarray:
        if self.model is None:
            raise LlamaError(f"{self.path}: this Llama is closed")
        if start + len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{start} cached + {len(tokens)} new tokens do not fit in n_ctx={self.n_ctx}")
        ids = np.asarray(tokens, dtype=np.int64)                            # (n,)
        chunks = []
        for b in range(0, len(ids), BATCH):
            batch = ids[b:b + BATCH]
            last = b + BATCH >= len(ids)
            out = self.model.forward(batch, start + b, self.cache, all_logits)  # (n or 1, n_vocab)
            self.n_past = start + b + len(batch)
            self._cached[start + b:] = batch.tolist()
            self.n_evaluated += len(batch)
            if all_logits or last:
                chunks.append(out)
        logits = np.concatenate(chunks) if all_logits else chunks[-1]       # (n or 1, n_vocab)
        self._logits = logits[-1].copy()
        return logits

    def _tokens(self, text_or_tokens: str | Sequence[int], add_bos: bool) -> list[int]:
        """Token ids, checked against the vocabulary; text is tokenized."""
        if isinstance(text_or_tokens, str):
            return self.tokenize(text_or_tokens, add_bos=add_bos and self.tokenizer.add_bos)
        if isinstance(text_or_tokens, (bytes, bytearray)):
            raise TypeError("pass text as str or tokens as a sequence of ints, not bytes")
        tokens = []
        for t in text_or_tokens:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"tokens must be integers, got {t!r}")
            if not 0 <= t < self.n_vocab:
                raise ValueError(f"token id {t} is out of range for a vocabulary of {self.n_vocab}")
            tokens.append(int(t))
        return tokens

    # -- generation (see engine.generate for the options)

    def steps(self, prompt: str | Sequence[int], sampler=None, **options) -> Iterator[Step]:
        """Generate from ``prompt``: one ``Step`` (token, text, logprob, top) per generated token."""
        return steps(self, prompt, sampler, **options)

    def generate_tokens(self, prompt: str | Sequence[int], sampler=None, **options) -> Iterator[int]:
        """Generated token ids; EOS ends generation and is not emitted."""
        return (step.token for step in steps(self, prompt, sampler, **options) if step.complete)

    def generate(self, prompt: str | Sequence[int], sampler=None, **options) -> Iterator[str]:
        """Generated text in pieces, each released once its UTF-8 characters are complete."""
        return (step.text for step in steps(self, prompt, sampler, **options) if step.text)

    def generate_string(self, prompt: str | Sequence[int], sampler=None, **options) -> str:
        """The whole generated text."""
        return "".join(self.generate(prompt, sampler, **options))

    # -- state

    def save_state(self) -> LlamaState:
        """A copy of the cached positions and the current logits."""
        n = self.n_past
        return LlamaState(tuple(self._cached), self.cache.k[:, :, :n].copy(), self.cache.v[:, :, :n].copy(),
                          None if self._logits is None else self._logits.copy())

    def load_state(self, state: LlamaState) -> None:
        """Restore a ``save_state`` snapshot taken from a model of the same shape."""
        if not isinstance(state, LlamaState):
            raise TypeError(f"load_state expects a LlamaState, got {type(state).__name__}")
        expected = self.cache.k.shape[:2] + (state.n_past,) + self.cache.k.shape[3:]
        if state.k.shape != expected or state.v.shape != expected:
            raise ValueError(f"state has cache shape {state.k.shape}, this model needs {expected}")
        if state.n_past > self.n_ctx:
            raise ContextOverflowError(f"state holds {state.n_past} tokens, more than n_ctx={self.n_ctx}")
        self.cache.k[:, :, :state.n_past] = state.k
        self.cache.v[:, :, :state.n_past] = state.v
        self.n_past = state.n_past
        self._cached = list(state.tokens)
        self._logits = None if state.logits is None else state.logits.copy()

    # -- lifetime

    def close(self) -> None:
        """Drop the weights and cache and release the file's mmap."""
        self.model = None
        self.cache = None
        self._gguf.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
