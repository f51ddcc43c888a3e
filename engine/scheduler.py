"""Continuous batching: several sequences of one model, evaluated together a step at a time.

    scheduler = Scheduler(Llama(path, batch_invariant=True), n_slots=4)
    with scheduler.lease(prompt_tokens) as llm:   # a Llama of its own for one request
        llm.create_completion(prompt_tokens, max_tokens=32)
    scheduler.close()

Each slot is a ``Llama`` (``Llama.sequence``) over the same weights with its part of one
KV cache (``KVCache.split``). Its evaluations do not run on the caller's thread: they are
handed to the scheduler's thread, which runs steps. A step is one forward pass
(``Model.batch_hidden``) over the rows of every waiting evaluation: the next token of each
generating sequence, and chunks of newly arrived prompts, up to ``STEP_ROWS`` rows in all,
so the weights stream from memory once per step for all of them. Sequences join and leave
between steps; sampling stays on the callers' threads, with the library's own code.

A step waits, at most ``GATHER_S``, until every leased slot has handed in its evaluation,
so the sequences that are generating move together rather than in turns.

The model must be batch invariant (``Llama(..., batch_invariant=True)``): every row then gets
the arithmetic it would get alone, so what a sequence computes never depends on which
sequences share its steps, nor on how its prompt is cut into chunks.

A lease takes the idle slot whose cached tokens share the longest prefix with the new
prompt (prompt caching: generation evaluates only the rest), else the least recently used.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from .errors import ArgumentError, LlamaError
from .llama import Llama, check_cache_fits
from .model import KVCache, Span

STEP_ROWS = 512  # rows of one forward pass, like llama.cpp's default micro-batch
GATHER_S = 0.02  # how long a step waits for the leased slots that have not handed in their evaluation


class Evaluation:
    """One ``Model.forward`` or ``Model.hidden`` call of a slot, done a chunk per step."""

    def __init__(self, order: int, cache: KVCache, tokens: np.ndarray, start: int, all_rows: bool, hidden: bool):
        self.order = order                   # arrival, for fairness among prompts
        self.cache, self.tokens, self.start = cache, tokens, start
        self.all_rows, self.hidden = all_rows, hidden
        self.done = 0                        # rows evaluated so far
        self.outputs: list[np.ndarray] = []  # logits or hidden states of the rows asked for
        self.error: BaseException | None = None
        self.finished = threading.Event()

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.done


class SlotModel:
    """What a slot's ``Llama`` evaluates through: ``Model``'s ``forward`` and ``hidden``, each handed
    to the scheduler and waited for."""

    def __init__(self, scheduler: "Scheduler"):
        self.scheduler = scheduler

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache, all_logits: bool) -> np.ndarray:
        return self.scheduler.evaluate(tokens, start, cache, all_logits, hidden=False)

    def hidden(self, tokens: np.ndarray, start: int, cache: KVCache, all_rows: bool) -> np.ndarray:
        return self.scheduler.evaluate(tokens, start, cache, all_rows, hidden=True)


class Scheduler:
    """``n_slots`` sequences of ``llm``'s model, each of ``llm.n_ctx`` positions, evaluated in shared steps."""

    def __init__(self, llm: Llama, n_slots: int):
        if not getattr(llm.model.backend, "batch_invariant", False):
            raise ArgumentError("the scheduler needs a batch-invariant model: Llama(..., batch_invariant=True)")
        check_cache_fits(llm.hparams, llm.n_ctx * n_slots)
        self.llm, self.model = llm, llm.model
        caches = KVCache.split(llm.hparams, llm.n_ctx, n_slots)
        slot_model = SlotModel(self)
        self.slots = [llm.sequence(slot_model, cache) for cache in caches]
        self.idle: list[Llama] = list(self.slots)  # least recently used first
        self.pending: list[Evaluation] = []
        self.arrivals = itertools.count()
        self.leased = 0
        self.changed = threading.Condition()
        self.closing = False
        self.steps = self.rows = 0  # steps run and rows evaluated, for the curious
        self.thread = threading.Thread(target=self.run, name="llamanp-scheduler", daemon=True)
        self.thread.start()

    # -- the slots

    @contextlib.contextmanager
    def lease(self, prompt: Sequence[int] = ()) -> Iterator[Llama]:
        """A slot of its own for one request, waiting for one to be idle: the one whose cached tokens
        share the longest prefix with ``prompt``, else the one idle longest."""
        with self.changed:
            self.changed.wait_for(lambda: self.idle or self.closing)
            if self.closing:
                raise LlamaError("the scheduler is closed")
            llm = max(self.idle, key=lambda slot: _shared_prefix(slot.cached_tokens, prompt))  # first of equals
            self.idle.remove(llm)
            self.leased += 1
        try:
            yield llm
        finally:
            with self.changed:
                self.idle.append(llm)
                self.leased -= 1
                self.changed.notify_all()

    @property
    def n_idle(self) -> int:
        return len(self.idle)

    # -- evaluation

    def evaluate(self, tokens: np.ndarray, start: int, cache: KVCache, all_rows: bool, hidden: bool) -> np.ndarray:
        """A slot's evaluation, run in the scheduler's steps: the logits (or hidden states) of every row
        or of the last, as ``Model.forward`` (``Model.hidden``) returns them."""
        with self.changed:
            if self.closing:
                raise LlamaError("the scheduler is closed")
            work = Evaluation(next(self.arrivals), cache, np.asarray(tokens, np.int64), start, all_rows, hidden)
            self.pending.append(work)
            self.changed.notify_all()
        work.finished.wait()
        if work.error is not None:
            raise work.error
        return work.outputs[0] if len(work.outputs) == 1 else np.concatenate(work.outputs)

    def run(self) -> None:
        """The scheduler's thread: gather the waiting evaluations, run a step, repeat until closed."""
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.pending or self.closing)
                if self.closing:
                    for work in self.pending:
                        work.error = LlamaError("the scheduler is closed")
                        work.finished.set()
                    return
                self.changed.wait_for(lambda: len(self.pending) >= self.leased or self.closing, timeout=GATHER_S)
                batch = sorted(self.pending, key=lambda w: (w.remaining > 1, w.order))  # next tokens first
            try:
                self.step(batch)
            except Exception as e:  # the step's evaluations fail with it; the scheduler goes on
                for work in batch:
                    work.error = e
            with self.changed:
                for work in batch:
                    if work.error is not None or work.remaining == 0:
                        self.pending.remove(work)
                        work.finished.set()

    def step(self, batch: list[Evaluation]) -> None:
        """One forward pass over the next rows of ``batch`` (at most STEP_ROWS in all): each evaluation's
        rows at its own positions into its own cache; the outputs it asked for appended to it."""
        taken, spans, ids, keep = [], [], [], []   # keep: row indices whose outputs are kept
        room = STEP_ROWS
        for work in batch:
            n = min(work.remaining, room)
            if n == 0:
                break
            first = sum(span.n for span in spans)
            rows = range(first, first + n) if work.all_rows else range(first + n - 1, first + n)
            if work.all_rows or n == work.remaining:
                keep.append((work, len(rows)))
                ids.extend(rows)
            spans.append(Span(work.cache, work.start + work.done, n))
            taken.append((work, n))
            room -= n
        tokens = np.concatenate([work.tokens[work.done:work.done + n] for work, n in taken])   # (rows,)
        hidden = self.model.batch_hidden(tokens, spans, np.asarray(ids, np.int64))             # (kept, dim)
        wants_logits = [not work.hidden for work, _ in keep]
        mask = np.repeat(wants_logits, [k for _, k in keep])                                    # (kept,)
        logits = self.model.logits(np.ascontiguousarray(hidden[mask])) if mask.any() else None  # (kept', n_vocab)
        at = at_logits = 0
        for (work, k), wants in zip(keep, wants_logits):
            if wants:
                work.outputs.append(logits[at_logits:at_logits + k])
                at_logits += k
            else:
                work.outputs.append(hidden[at:at + k])
            at += k
        for work, n in taken:
            work.done += n
        self.steps += 1
        self.rows += len(tokens)

    # -- lifetime

    def close(self) -> None:
        """Stop the scheduler's thread (failing evaluations still waiting) and close the model."""
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.thread.join()
        self.llm.close()


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
