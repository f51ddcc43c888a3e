"""``Llama``: a model file, a KV cache, and the logits of the tokens fed so far.

    with Llama("model.gguf") as llm:
        llm.update("The quick brown")      # BOS + tokens, evaluated into the cache
        llm.logits                         # (n_vocab,) float32, for the next token
        llm.update([fox_id])               # append one more token
        llm.update([dog_id], n_past=3)     # rewind to 3 cached tokens, then append
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np

from .arguments import check_int, check_token
from .backends import make_backend
from .errors import ArgumentError, ContextOverflowError, LlamaError
from .gguf import read_gguf
from .model import KVCache, Model
from .models import resolve
from .sampling import check_seed
from .serial import SerialLock
from .threads import check_threads

BATCH = 512  # tokens evaluated per forward pass, like llama.cpp's default micro-batch
DEFAULT_N_CTX = 4096  # the context llama.cpp's tools default to; a file's training context may be far larger


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


def check_cache_fits(hp, n_ctx: int) -> None:
    """Refuse a KV cache larger than the machine's memory, rather than fail or swap later."""
    cache_bytes = 2 * hp.n_layers * hp.kv_dim * n_ctx * np.dtype(np.float16).itemsize
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if cache_bytes > memory:
        raise ArgumentError(f"n_ctx={n_ctx} needs a {cache_bytes / 2**30:.1f} GiB KV cache, "
                         f"more than this machine's {memory / 2**30:.1f} GiB of memory")


def _frozen(logits: np.ndarray) -> np.ndarray:
    """A read-only float32 copy: ``Llama.logits`` hands it out, and no caller can write through it."""
    logits = np.array(logits, dtype=np.float32)
    logits.flags.writeable = False
    return logits


class Llama:
    """A LLaMA model with a KV cache: feed tokens or text, read the next token's logits.

    n_ctx: the context size (default: the file's training context, at most ``DEFAULT_N_CTX``).
    n_threads: threads per op, 1 to 512 (llama.cpp's bound; default: OpenMP's choice).
    seed: the seed of the sampler ``generate*`` makes when given neither a sampler nor a seed,
    so every such generation from a seeded ``Llama`` draws the same way; None draws afresh.
    backend: "auto" (the compiled exact backend when built, else "numpy"), "numpy", "cython", or
    "plain", the textbook path, close to llama.cpp's logits but not equal (see ``engine.backends``).
    batch_invariant: evaluate every position of a prompt as llama.cpp evaluates a single token
    (the decode path's kernels), so logits do not depend on how tokens are batched: the
    server's arithmetic (docs/serving.md). Off, a prompt gets llama.cpp's prompt-batch logits.
    ggml_isa: whose logits the exact backends reproduce: llama.cpp built for "avx2" or "avx512", or
    "auto", the build llama.cpp makes for this CPU (``engine.isa``); the plain backend ignores it.

    One ``Llama`` serves one caller at a time, so threads sharing it get the results each
    would get alone. ``update``, ``get_logits``, ``eval_logits``, ``save_state``,
    ``load_state`` and ``close`` each hold the lock ``serial``; a generation (``steps``,
    ``generate*``) holds it from its first step until it is exhausted, closed or garbage
    collected, and other threads wait for it. The thread holding it may call back in (a
    sampler, ``Chat``). Hold ``serial`` yourself to keep several calls together
    (``with llm.serial: llm.update(...); llm.logits``), and close a generation you stop
    reading early, or other threads wait until it is collected.

    After an exception in an evaluation, even a KeyboardInterrupt inside the forward pass,
    ``n_past``, ``cached_tokens`` and ``logits`` describe what the cache holds: the positions
    before the batch that failed. After ``close`` every evaluation, generation and state
    call raises ``LlamaError``.
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None,
                 seed: int | None = None, backend: str = "auto", batch_invariant: bool = False,
                 ggml_isa: str = "auto"):
        n_threads = check_threads(n_threads)
        if n_ctx is not None:
            n_ctx = check_int(n_ctx, "n_ctx", 1, 2**31 - 1)
        self.seed = check_seed(seed)
        path = resolve(path)  # a pulled model's name stands for its file
        self._gguf = read_gguf(path)
        try:
            self.model = Model(self._gguf, make_backend(backend, n_threads, batch_invariant, ggml_isa))
            self.hparams = self.model.hp
            self.n_ctx = check_int(min(self.hparams.n_ctx_train, DEFAULT_N_CTX) if n_ctx is None else n_ctx,
                                   "n_ctx", 1, 2**31 - 1)
            check_cache_fits(self.model.hp, self.n_ctx)
            self.cache = KVCache(self.model.hp, self.n_ctx)
        except BaseException:
            self._gguf.close()
            raise
        self.path = os.fspath(path)
        self.n_threads = n_threads
        self.serial = SerialLock()
        self.n_past = 0
        self._cached: list[int] = []  # the token ids in the cache, len n_past
        self.n_evaluated = 0  # tokens run through the model since loading, across every call
        self._logits: np.ndarray | None = None

    def sequence(self, model, cache: KVCache) -> "Llama":
        """Another ``Llama`` over this one's file, tokenizer and settings, with its own bookkeeping,
        that evaluates through ``model`` (anything with ``Model``'s ``forward`` and ``hidden``) into
        ``cache``: one sequence of a server's batch (``engine.scheduler``). Close this one, not it."""
        self.tokenizer  # built once, shared
        other = copy.copy(self)
        other.model, other.cache = model, cache
        other.serial = SerialLock()
        other.n_past, other._cached, other.n_evaluated, other._logits = 0, [], 0, None
        return other

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
        """The logits after the last cached token, float32 (n_vocab,), read-only."""
        self._check_open()
        if self._logits is None:
            raise LlamaError("no logits for the last cached position: call update() with at least one token")
        return self._logits

    def update(self, text_or_tokens: str | Sequence[int], n_past: int | None = None) -> None:
        """Append tokens (or text, tokenized; BOS only at position 0) to the cache, after rewinding it to ``n_past``."""
        with self.serial:
            start = self.n_past if n_past is None else self._position(n_past)
            tokens = self._tokens(text_or_tokens, add_bos=start == 0)
            if not tokens:
                if start != self.n_past:
                    raise ArgumentError("rewinding needs at least one token to evaluate, so there are logits to read")
                return
            self._evaluate(tokens, start, all_logits=False)

    def get_logits(self, text_or_tokens: str | Sequence[int]) -> np.ndarray:
        """A fresh evaluation from position 0; the last position's logits (read-only)."""
        with self.serial:
            self.update(text_or_tokens, n_past=0)
            return self.logits

    def eval_logits(self, tokens: Sequence[int], n_past: int = 0) -> np.ndarray:
        """Evaluate ``tokens`` after the first ``n_past`` cached ones (default: afresh from position 0);
        the logits of every position, (len(tokens), n_vocab)."""
        with self.serial:
            start = self._position(n_past)
            tokens = self._tokens(tokens, add_bos=False)
            if not tokens:
                raise ArgumentError("eval_logits needs at least one token")
            return self._evaluate(tokens, start, all_logits=True)

    def eval_hidden(self, tokens: Sequence[int]) -> np.ndarray:
        """Evaluate ``tokens`` afresh from position 0; the final hidden state (after the output norm)
        of every position, (len(tokens), dim): what llama.cpp pools into embeddings. The cache then
        holds the tokens, with no logits to read."""
        with self.serial:
            tokens = self._tokens(tokens, add_bos=False)
            if not tokens:
                raise ArgumentError("eval_hidden needs at least one token")
            return self._evaluate(tokens, 0, all_logits=True, hidden=True)

    @property
    def cached_tokens(self) -> list[int]:
        """The token ids whose keys and values are in the cache, in order (a copy)."""
        return list(self._cached)

    def _evaluate(self, tokens: list[int], start: int, all_logits: bool, hidden: bool = False) -> np.ndarray:
        """Run ``tokens`` through the model at positions [start, start + n), a batch at a time;
        the logits of every position, or of the last, (n or 1, n_vocab); with ``hidden`` the
        final hidden states instead, (n or 1, dim), and no logits are kept.

        A batch overwrites its cache rows layer by layer, so when one fails (any exception,
        KeyboardInterrupt included) only the positions before it are intact: the bookkeeping
        is then cut back there, with the logits of the last completed batch, or none when
        the failed batch was the first and ``start`` rewound past the logits there were.
        """
        self._check_open()
        if start + len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{start} cached + {len(tokens)} new tokens do not fit in n_ctx={self.n_ctx}")
        ids = np.asarray(tokens, dtype=np.int64)                            # (n,)
        chunks = []
        done = (0, self._logits if start == self.n_past else None)  # (tokens cached, the logits after them)
        try:
            for b in range(0, len(ids), BATCH):
                batch = ids[b:b + BATCH]
                run = self.model.hidden if hidden else self.model.forward
                out = run(batch, start + b, self.cache, all_logits)                # (n or 1, n_vocab or dim)
                done = (b + len(batch), None if hidden else out[-1])  # one assignment: an interrupt sees all or none
                chunks.append(out)
        finally:
            n_done, logits = done
            self.n_past = start + n_done
            self._cached[start:] = tokens[:n_done]
            self.n_evaluated += n_done
            self._logits = None if logits is None else _frozen(logits)
        return np.concatenate(chunks) if all_logits else chunks[-1]         # (n or 1, n_vocab)

    def _check_open(self) -> None:
        if self.model is None:
            raise LlamaError(f"{self.path}: this Llama is closed")

    def _position(self, n_past) -> int:
        """``n_past`` checked as a cache position to rewind to: an integer from 0 to the cached tokens."""
        return check_int(n_past, "n_past", 0, self.n_past)

    def _tokens(self, text_or_tokens: str | Sequence[int], add_bos: bool) -> list[int]:
        """Token ids, checked against the vocabulary; text is tokenized."""
        if isinstance(text_or_tokens, str):
            return self.tokenize(text_or_tokens, add_bos=add_bos and self.tokenizer.add_bos)
        if isinstance(text_or_tokens, (bytes, bytearray)):
            raise TypeError("pass text as str or tokens as a sequence of ints, not bytes")
        return [check_token(t, self.n_vocab) for t in text_or_tokens]

    # -- generation (see engine.generate for the options)

    def steps(self, prompt: str | Sequence[int], sampler=None, **options) -> Iterator:
        """Generate from ``prompt``: one ``generate.Step`` (token, text, logprob, top) per generated token."""
        from .generate import steps  # generate builds on Llama, not the other way round
        return steps(self, prompt, sampler, **options)

    def generate_tokens(self, prompt: str | Sequence[int], sampler=None, **options) -> Iterator[int]:
        """Generated token ids; EOS ends generation and is not emitted."""
        return (step.token for step in self.steps(prompt, sampler, **options) if step.complete)

    def generate(self, prompt: str | Sequence[int], sampler=None, **options) -> Iterator[str]:
        """Generated text in pieces, each released once its UTF-8 characters are complete."""
        return (step.text for step in self.steps(prompt, sampler, **options) if step.text)

    def generate_string(self, prompt: str | Sequence[int], sampler=None, **options) -> str:
        """The whole generated text."""
        return "".join(self.generate(prompt, sampler, **options))

    # -- llama-cpp-python's API (see engine.completion and engine.embedding for the parameters)

    def create_completion(self, prompt: str | Sequence[int], **options):
        """A ``text_completion`` dict, or with ``stream=True`` an iterator of chunks."""
        from .completion import create_completion
        return create_completion(self, prompt, **options)

    def __call__(self, prompt: str | Sequence[int], **options):
        """``create_completion``."""
        return self.create_completion(prompt, **options)

    def create_chat_completion(self, messages: list[dict], **options):
        """A ``chat.completion`` dict, or with ``stream=True`` an iterator of chunks."""
        from .completion import create_chat_completion
        return create_chat_completion(self, messages, **options)

    def embed(self, input: str | Sequence[str], **options):
        """The embedding of a text, or a list of them for a list of texts."""
        from .embedding import embed
        return embed(self, input, **options)

    def create_embedding(self, input: str | Sequence[str], **options) -> dict:
        """OpenAI's embedding response for a text or a list of texts."""
        from .embedding import create_embedding
        return create_embedding(self, input, **options)

    # -- state

    def save_state(self) -> LlamaState:
        """A copy of the cached positions and the current logits."""
        with self.serial:
            self._check_open()
            n = self.n_past
            return LlamaState(tuple(self._cached), self.cache.k[:, :, :n].copy(), self.cache.v[:, :, :n].copy(),
                              None if self._logits is None else self._logits.copy())

    def load_state(self, state: LlamaState) -> None:
        """Restore a ``save_state`` snapshot taken from a model of the same shape; a state that
        could not have come from one is refused and leaves this ``Llama`` as it was."""
        if not isinstance(state, LlamaState):
            raise TypeError(f"load_state expects a LlamaState, got {type(state).__name__}")
        with self.serial:
            self._check_open()
            tokens = [check_token(t, self.n_vocab) for t in state.tokens]
            self._check_state(state)
            self.cache.k[:, :, :state.n_past] = state.k
            self.cache.v[:, :, :state.n_past] = state.v
            self.n_past = state.n_past
            self._cached = tokens
            self._logits = None if state.logits is None else _frozen(state.logits)

    def _check_state(self, state: LlamaState) -> None:
        """Refuse a cache or logits of the wrong shape or dtype, or a cache holding NaN or infinity."""
        if state.n_past > self.n_ctx:
            raise ContextOverflowError(f"state holds {state.n_past} tokens, more than n_ctx={self.n_ctx}")
        expected = self.cache.k.shape[:2] + (state.n_past,) + self.cache.k.shape[3:]
        for name, cache in (("k", state.k), ("v", state.v)):
            if not isinstance(cache, np.ndarray) or cache.shape != expected or cache.dtype != np.float16:
                raise ArgumentError(f"state's {name} cache shape {getattr(cache, 'shape', None)} and dtype "
                                    f"{getattr(cache, 'dtype', type(cache).__name__)} do not fit this model's "
                                    f"{expected} float16")
            if not np.isfinite(cache).all():
                raise ArgumentError(f"state's {name} cache holds NaN or infinity")
        if state.logits is not None and (not isinstance(state.logits, np.ndarray) or state.logits.dtype != np.float32
                                         or state.logits.shape != (self.n_vocab,) or state.n_past == 0):
            raise ArgumentError(f"state's logits must be float32 of shape ({self.n_vocab},) after at least one "
                                f"token, got {getattr(state.logits, 'dtype', type(state.logits).__name__)} "
                                f"of shape {getattr(state.logits, 'shape', None)} after {state.n_past}")

    # -- lifetime

    def close(self) -> None:
        """Drop the weights and cache and release the file's mmap (waiting for a generation in progress)."""
        with self.serial:
            self.model = None
            self.cache = None
            self.n_past = 0
            self._cached = []
            self._logits = None
            self._gguf.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
