"""Generation: the loop from next-token logits to a stream of tokens and text.

Each step reads the logits of the last evaluated position, lets the sampler pick
a token, tells a stateful sampler what was accepted, and evaluates that token to
get the next logits. Generation ends at an end-of-generation token (never
emitted), after ``max_tokens``, at a stop string (neither it nor what follows is
emitted), or at the end of the context.

A prompt that starts with tokens already in the KV cache evaluates only the rest,
so continuing a conversation costs only the new turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from .arguments import check_int, check_token
from .errors import ContextOverflowError
from .sampling import MirostatV2, log_softmax
from .tokenizer import StreamDecoder

if TYPE_CHECKING:
    from .grammar import Grammar
    from .llama import Llama

Sampler = Callable[[np.ndarray], int]


@dataclass(frozen=True)
class Step:
    """One generated token with the text it released and, on request, its log-probabilities.

    ``text`` is what this token lets through: '' while a character's UTF-8 bytes
    or a possible stop string are incomplete, then everything held back so far.
    ``logprob`` is the token's log-probability under the model's own distribution
    (before logit bias, grammar or sampler); ``top`` the ``top_logprobs`` most
    likely (token, logprob) pairs, most likely first. When a stop string begins
    inside a token's text, that last step carries only the text before the stop
    and ``complete=False``; ``generate_tokens`` leaves such a token out.
    """
    token: int
    text: str
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    complete: bool = True  # False only for a token cut short by a stop string


def prepare(llm: "Llama", prompt: str | Sequence[int]) -> list[int]:
    """Evaluate ``prompt`` (text gets BOS), reusing the longest cached prefix; returns its tokens."""
    tokens = llm.tokenize(prompt, add_bos=True) if isinstance(prompt, str) else list(prompt)
    if not tokens:
        raise ValueError("the prompt is empty: give at least one token to continue from")
    cached = llm.cached_tokens
    shared = 0
    while shared < min(len(cached), len(tokens) - 1) and cached[shared] == tokens[shared]:
        shared += 1
    llm.update(tokens[shared:], n_past=shared)  # at least the last prompt token is evaluated, for its logits
    return tokens


def steps(llm: "Llama", prompt: str | Sequence[int], sampler: Sampler | None = None, *,
          max_tokens: int | None = None, seed: int | None = None, stop: str | Iterable[str] = (),
          logit_bias: dict[int, float] | None = None, grammar: "Grammar | None" = None,
          top_logprobs: int = 0, stop_at_context_end: bool = False) -> Iterator[Step]:
    """Generate from ``prompt``; the engine behind ``generate_tokens``, ``generate`` and ``generate_string``.

    sampler: any callable ``logits -> token id``, given its own copy of the logits
    (default: ``MirostatV2(seed=seed)``).
    seed: seeds the default sampler (default: ``llm.seed``); seed your own sampler yourself.
    logit_bias: {token id: amount added to its logit}; ``-inf`` bans a token, ``+inf`` forces it.
    grammar: constrain the output to a ``Grammar`` (see ``engine.grammar``).
    stop_at_context_end: end quietly when the context is full instead of raising
    ``ContextOverflowError``.

    The generation holds ``llm.serial`` from its first step until it ends, is closed or collected.
    """
    max_tokens = None if max_tokens is None else check_int(max_tokens, "max_tokens", 0)
    top_logprobs = check_int(top_logprobs, "top_logprobs", 0)
    if sampler is None:
        sampler = MirostatV2(seed=llm.seed if seed is None else seed)
    elif seed is not None:
        raise ValueError("seed seeds the default sampler; seed the sampler you pass yourself")
    stops = _stop_strings(stop)
    bias = _bias_vector(logit_bias, llm.n_vocab)
    end_tokens = llm.tokenizer.eog  # as llama_vocab_is_eog decides
    if grammar is not None:
        from .grammar_sampler import GrammarSampler
        sampler = GrammarSampler(grammar, llm.tokenizer.pieces, end_tokens, sampler)

    with llm.serial:
        prepare(llm, prompt)
        out = _Outbox(StreamDecoder(llm.tokenizer, at_start=False), stops)
        for n_generated in range(max_tokens if max_tokens is not None else llm.n_ctx + 1):
            if n_generated:
                if llm.n_past >= llm.n_ctx:
                    if stop_at_context_end:
                        break
                    raise ContextOverflowError(f"the context is full (n_ctx={llm.n_ctx}) after {n_generated} "
                                               "generated tokens; pass stop_at_context_end=True to end quietly")
                llm.serial.adopt()  # resumed, perhaps on another thread (a server's pool): the hold moves here
                llm.update([out.last_token])
            logits = llm.logits                                               # (n_vocab,), read-only
            token = check_token(sampler(logits.copy() if bias is None else logits + bias), llm.n_vocab)
            if hasattr(sampler, "accept"):
                sampler.accept(token)
            if token in end_tokens:
                break
            logprobs = log_softmax(logits)                                    # (n_vocab,)
            yield from out.add(token, float(logprobs[token]), _top(logprobs, top_logprobs))
            if out.stopped:
                return
        yield from out.finish()


class _Outbox:
    """Holds generated tokens back until their text is complete and cannot be the start of a stop string."""

    def __init__(self, decoder: StreamDecoder, stops: tuple[str, ...]):
        self.decoder, self.stops = decoder, stops
        self.text = ""        # all generated text
        self.released = 0     # how much of it has been let through
        self.pending: list[tuple[int, float, tuple, int]] = []  # (token, logprob, top, where its text ends)
        self.last_token = -1
        self.stopped = False

    def add(self, token: int, logprob: float, top: tuple) -> Iterator[Step]:
        self.last_token = token
        self.text += self.decoder.feed(token)
        self.pending.append((token, logprob, top, len(self.text)))
        cut = _find_stop(self.text, self.released, self.stops)
        if cut is not None:
            self.stopped = True
            return self._release(cut, truncate=True)
        return self._release(len(self.text) - _held_back(self.text, self.stops), truncate=False)

    def finish(self) -> Iterator[Step]:
        """Release everything; bytes of an unfinished character go out as U+FFFD with the last token."""
        self.text += self.decoder.flush()
        if self.pending:
            self.pending[-1] = self.pending[-1][:3] + (len(self.text),)
        return self._release(len(self.text), truncate=False)

    def _release(self, upto: int, truncate: bool) -> Iterator[Step]:
        """Steps for the pending tokens whose text ends by ``upto``. With ``truncate`` (a stop string
        starts at ``upto``) the token running past it comes out cut there and marked incomplete, and
        nothing after it does."""
        steps = []
        while self.pending and self.pending[0][3] <= upto:
            token, logprob, top, end = self.pending.pop(0)
            steps.append(Step(token, self.text[self.released:end], logprob, top))
            self.released = end
        if truncate and self.pending and self.released < upto:
            token, logprob, top, _ = self.pending[0]
            steps.append(Step(token, self.text[self.released:upto], logprob, top, complete=False))
        if truncate:
            self.pending.clear()
        return iter(steps)


def _stop_strings(stop: str | Iterable[str]) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def _find_stop(text: str, released: int, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in the unreleased text, or None."""
    hits = [i for s in stops if (i := text.find(s, released)) >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
               default=0)


def _bias_vector(logit_bias: dict[int, float] | None, n_vocab: int) -> np.ndarray | None:
    if not logit_bias:
        return None
    bias = np.zeros(n_vocab, dtype=np.float32)
    for token, amount in logit_bias.items():
        bias[check_token(token, n_vocab)] += amount
    return bias


def _top(logprobs: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    if k == 0:
        return ()
    ids = np.argsort(-logprobs, kind="stable")[:k]
    return tuple((int(i), float(logprobs[i])) for i in ids)


def continuation_logprobs(llm: "Llama", prefix: str | Sequence[int],
                          continuations: Sequence[str | Sequence[int]]) -> list[float]:
    """log p(continuation | prefix) for each continuation, evaluating the prefix once.

    Each continuation is scored by rewinding the cache to the end of the prefix
    (``n_past``), so they all share one evaluated prefix. A text continuation is
    tokenized on its own, without BOS: "happy" becomes "▁happy", the word as it
    reads after a space.
    """
    with llm.serial:
        prefix_tokens = prepare(llm, prefix)
        start = len(prefix_tokens)
        first = log_softmax(llm.logits)                                       # (n_vocab,)
        scores = []
        for continuation in continuations:
            ids = llm.tokenize(continuation, add_bos=False) if isinstance(continuation, str) else list(continuation)
            if not ids:
                raise ValueError("a continuation must have at least one token")
            total = float(first[check_token(ids[0], llm.n_vocab)])
            if len(ids) > 1:
                later = llm.eval_logits(ids[:-1], n_past=start)              # (len(ids) - 1, n_vocab)
                total += float(sum(log_softmax(row)[t] for row, t in zip(later, ids[1:])))
            scores.append(total)
        return scores
