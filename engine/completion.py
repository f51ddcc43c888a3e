"""Completions in llama-cpp-python's shape: ``create_completion`` and ``create_chat_completion``.

The parameters, their defaults and the returned dicts are those of llama-cpp-python
0.3.36's ``Llama`` (themselves OpenAI's), so code written against it runs unchanged:

    out = llm.create_completion("ROMEO:", max_tokens=32, temperature=0)
    out["choices"][0]["text"], out["usage"]["completion_tokens"]
    for chunk in llm.create_chat_completion(messages, stream=True): ...

Generation is ``engine.generate.steps``; the sampler is the chain llama-cpp-python
builds from these parameters (``completion_sampler``), so the same seed draws the
same tokens. Arguments are checked before anything runs, so a bad one raises before
the first chunk of a stream. Where llama-cpp-python has a known bug, this module
does the right thing instead (docs/serving.md lists them).
"""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from .arguments import check_int
from .chat import Chat
from .errors import ArgumentError, ContextOverflowError
from .generate import Step, steps
from .grammar import Grammar
from .sampling import Candidates, Chain, Dist, MirostatV1, MirostatV2, Penalties, _check_range, check_chain_options

if TYPE_CHECKING:
    from .llama import Llama

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size: the window the repetition penalties see


class PenalizedSampler:
    """Repetition penalties, then a final pick: llama-cpp-python's chain for greedy (temperature 0),
    a plain draw (temperature < 0) and Mirostat. ``pick`` takes the candidates and sets ``selected``."""

    def __init__(self, penalties: Penalties, pick):
        self.penalties, self.pick = penalties, pick

    def accept(self, token_id: int) -> None:
        self.penalties.accept(token_id)

    def __call__(self, logits) -> int:
        cand = Candidates.from_logits(logits)
        cand.force_infinite()
        self.penalties(cand)
        self.pick(cand)
        return cand.token


def first_largest(cand: Candidates) -> None:
    """llama.cpp's greedy sampler: the first candidate (in list order) with the largest logit."""
    cand.selected = int(np.argmax(cand.logits))


def completion_sampler(n_vocab: int, *, temperature: float, top_p: float, top_k: int, min_p: float,
                       typical_p: float, repeat_penalty: float, frequency_penalty: float, presence_penalty: float,
                       mirostat_mode: int, mirostat_tau: float, mirostat_eta: float, seed: int | None):
    """The sampler llama-cpp-python's ``_init_sampler`` chains from these parameters (logit bias and
    grammar are applied before it by ``steps``): penalties over the last 64 tokens, then greedy for
    temperature 0, a plain draw below 0, Mirostat 1 or 2 if asked, else top-k, typical-p, top-p,
    min-p (each keeping at least one token), temperature and a seeded draw."""
    check_chain_options(top_k=top_k, typical_p=typical_p, top_p=top_p, min_p=min_p)  # checked in every mode
    _check_range("temperature", temperature, None, None, "a finite number")
    mirostat_mode = check_int(mirostat_mode, "mirostat_mode (0 off, 1 or 2)", 0, 2)
    penalties = Penalties(PENALTY_LAST_N, repeat_penalty, frequency_penalty, presence_penalty)
    if temperature == 0:
        return PenalizedSampler(penalties, first_largest)
    if temperature < 0:
        return PenalizedSampler(penalties, Dist(seed))
    if mirostat_mode == 1:
        return PenalizedSampler(penalties, MirostatV1(n_vocab, mirostat_tau, mirostat_eta, seed=seed).apply)
    if mirostat_mode == 2:
        return PenalizedSampler(penalties, MirostatV2(mirostat_tau, mirostat_eta, seed=seed).apply)
    return Chain(seed=seed, penalty_last_n=PENALTY_LAST_N, repeat_penalty=repeat_penalty,
                 frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, top_k=top_k,
                 typical_p=typical_p, top_p=top_p, min_p=min_p, temperature=temperature, min_keep=1)


class _Counted:
    """A sampler that counts the tokens accepted from it, end-of-generation ones apart."""

    def __init__(self, sampler, end_tokens: frozenset[int]):
        self.sampler, self.end_tokens = sampler, end_tokens
        self.n_tokens = 0

    def __call__(self, logits) -> int:
        return self.sampler(logits)

    def accept(self, token_id: int) -> None:
        self.n_tokens += token_id not in self.end_tokens
        self.sampler.accept(token_id)


def _grammar(grammar) -> Grammar | None:
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar.from_string(grammar)
    raise TypeError(f"grammar must be an engine.grammar.Grammar or GBNF text, got {type(grammar).__name__}")


def _logit_bias(logit_bias) -> dict[int, float] | None:
    """{token id: bias}; keys may be ids written as text, as JSON carries them."""
    if logit_bias is None:
        return None
    if not isinstance(logit_bias, dict):
        raise ArgumentError(f"logit_bias must map token ids to numbers, got {type(logit_bias).__name__}")
    try:
        return {int(k): v for k, v in logit_bias.items()}
    except ValueError:
        raise ArgumentError(f"logit_bias keys must be token ids, got {list(logit_bias)!r}") from None


def _unsupported(**options) -> None:
    """ArgumentError naming the first llama-cpp-python option given that llamanp does not implement."""
    for name, value in options.items():
        if value is not None:
            raise ArgumentError(f"{name} is not supported by llamanp")


def prompt_tokens(llm: "Llama", prompt: str | Sequence[int]) -> list[int]:
    """The prompt's tokens as llama-cpp-python makes them: text gets BOS (if the model adds one) and
    has its control tokens parsed; a token list is taken as it is; an empty prompt is BOS alone."""
    if isinstance(prompt, str):
        tokens = llm.tokenize(prompt, add_bos=True, special=True)
    elif isinstance(prompt, (bytes, bytearray)) or not isinstance(prompt, Sequence):
        raise TypeError(f"prompt must be text or a list of token ids, got {type(prompt).__name__}")
    else:
        tokens = llm._tokens(prompt, add_bos=False)
    if not tokens:
        raise ArgumentError("the prompt is empty: give text or at least one token id")
    return tokens


def create_completion(llm: "Llama", prompt: str | Sequence[int], suffix: str | None = None,
                      max_tokens: int | None = 16, temperature: float = 0.8, top_p: float = 0.95,
                      min_p: float = 0.05, typical_p: float = 1.0, logprobs: int | None = None, echo: bool = False,
                      stop: str | list[str] | None = None, frequency_penalty: float = 0.0,
                      presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40,
                      stream: bool = False, seed: int | None = None, tfs_z: float = 1.0, mirostat_mode: int = 0,
                      mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                      stopping_criteria=None, logits_processor=None, grammar=None,
                      logit_bias: dict[int, float] | None = None, stream_options: dict | None = None):
    """Continue ``prompt``: a ``text_completion`` dict, or with ``stream`` an iterator of chunks.

    seed: the sampler's seed (default: the ``Llama``'s, else a fresh random one).
    max_tokens: None or <= 0 generates until the context is full; it is cut to what fits.
    logprobs: the number of most likely alternatives to list for every generated token.
    stream_options: OpenAI's ``{"include_usage": True}`` ends a stream with a chunk of no choices
    and the ``usage`` (an addition to llama-cpp-python's parameters).
    tfs_z is accepted and ignored, as llama-cpp-python ignores it; suffix (infill),
    stopping_criteria and logits_processor are not supported.
    """
    _unsupported(suffix=suffix, stopping_criteria=stopping_criteria, logits_processor=logits_processor)
    tokens = prompt_tokens(llm, prompt)
    if len(tokens) >= llm.n_ctx:
        raise ContextOverflowError(f"the prompt's {len(tokens)} tokens leave no room in n_ctx={llm.n_ctx}")
    if max_tokens is not None:
        check_int(max_tokens, "max_tokens", -2**31)
    room = llm.n_ctx - len(tokens)
    max_tokens = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
    top_logprobs = 0 if logprobs is None else check_int(logprobs, "logprobs", 0, llm.n_vocab)
    end_tokens = llm.tokenizer.eog  # as llama_vocab_is_eog decides
    sampler = _Counted(completion_sampler(
        llm.n_vocab, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
        repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
        seed=llm.seed if seed is None else seed), end_tokens)
    generation = steps(llm, tokens, sampler, max_tokens=max_tokens, stop=stop or (),
                       logit_bias=_logit_bias(logit_bias), grammar=_grammar(grammar), top_logprobs=top_logprobs)
    prompt_text = prompt if isinstance(prompt, str) else llm.untokenize(tokens[tokens[0] == llm.bos:])
    head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
            "model": llm.path if model is None else model}
    run = _Completion(llm, generation, sampler, max_tokens, logprobs is not None, len(prompt_text))
    usage = _include_usage(stream_options)
    if stream:
        return run.chunks(head, prompt_text if echo else "", len(tokens) if usage else None)
    return run.result(head, prompt_text if echo else "", len(tokens))


def _include_usage(stream_options) -> bool:
    """Whether ``stream_options`` (OpenAI's: None or {"include_usage": bool}) asks for a usage chunk."""
    if stream_options is None:
        return False
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"} \
            or not isinstance(stream_options.get("include_usage", False), bool):
        raise ArgumentError(f'stream_options must be {{"include_usage": true or false}}, got {stream_options!r}')
    return stream_options.get("include_usage", False)


class _Completion:
    """One generation turned into OpenAI's choices: text, finish reason and logprobs."""

    def __init__(self, llm: "Llama", generation: Iterator[Step], sampler: _Counted, max_tokens: int,
                 logprobs: bool, text_offset: int):
        self.llm, self.generation, self.sampler = llm, generation, sampler
        self.max_tokens, self.logprobs = max_tokens, logprobs
        self.text_offset = text_offset  # where the completion starts in prompt + completion text
        self.cut_by_stop = False

    @property
    def finish_reason(self) -> str:
        """"length" when max_tokens ran out, "stop" at an end-of-generation token or a stop string."""
        return "length" if self.sampler.n_tokens >= self.max_tokens and not self.cut_by_stop else "stop"

    def _steps(self) -> Iterator[Step]:
        for step in self.generation:
            self.cut_by_stop |= not step.complete
            yield step

    def _logprobs(self, steps: list[Step], offset: int) -> dict | None:
        """llama-cpp-python's ``logprobs`` dict for ``steps``, whose text starts ``offset`` characters
        into the completion."""
        if not self.logprobs:
            return None
        tokens, offsets, top = [], [], []
        for step in steps:
            tokens.append(self._piece(step.token))
            offsets.append(self.text_offset + offset)
            offset += len(step.text)
            alternatives = {self._piece(t): lp for t, lp in step.top}
            alternatives[tokens[-1]] = step.logprob
            top.append(alternatives)
        return {"tokens": tokens, "text_offset": offsets, "token_logprobs": [s.logprob for s in steps],
                "top_logprobs": top}

    def _piece(self, token: int) -> str:
        return self.llm.tokenizer.token_to_piece(token).decode("utf-8", errors="ignore")

    def usage(self, n_prompt: int) -> dict:
        n = self.sampler.n_tokens
        return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}

    def result(self, head: dict, echo: str, n_prompt: int) -> dict:
        steps = list(self._steps())
        text = "".join(step.text for step in steps)
        return {**head, "choices": [{"text": echo + text, "index": 0, "logprobs": self._logprobs(steps, 0),
                                     "finish_reason": self.finish_reason}],
                "usage": self.usage(n_prompt)}

    def chunks(self, head: dict, echo: str, usage_of: int | None = None) -> Iterator[dict]:
        """One chunk per piece of released text (and its logprobs), then an empty one with the finish reason,
        and with ``usage_of`` (the prompt's token count) a last one of no choices with the usage.
        Closing the iterator ends the generation and frees the ``Llama``."""
        try:
            if echo:
                yield self._chunk(head, echo, None, None)
            offset = 0
            for step in self._steps():
                if step.text or self.logprobs:
                    yield self._chunk(head, step.text, self._logprobs([step], offset), None)
                offset += len(step.text)
            yield self._chunk(head, "", None, self.finish_reason)
            if usage_of is not None:
                yield {**head, "choices": [], "usage": self.usage(usage_of)}
        finally:
            self.generation.close()

    @staticmethod
    def _chunk(head: dict, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        return {**head, "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}


# ---- chat ------------------------------------------------------------------------------------------------

def response_grammar(response_format: dict | None) -> Grammar | None:
    """The grammar a ``response_format`` asks for: any JSON for ``{"type": "json_object"}``, a schema's
    JSON with a ``"schema"`` (or OpenAI's ``{"type": "json_schema", "json_schema": {"schema": ...}}``)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ArgumentError(f"response_format must be a dict, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")
    else:
        raise ArgumentError(f"response_format type must be text, json_object or json_schema, got {kind!r}")
    return Grammar.json() if schema is None else Grammar.from_json_schema(schema)


def create_chat_completion(llm: "Llama", messages: list[dict], functions=None, function_call=None, tools=None,
                           tool_choice=None, temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
                           min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False,
                           stop: str | list[str] | None = None, seed: int | None = None,
                           response_format: dict | None = None, max_tokens: int | None = None,
                           presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                           repeat_penalty: float = 1.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
                           mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                           logits_processor=None, grammar=None, logit_bias: dict[int, float] | None = None,
                           logprobs: bool | None = None, top_logprobs: int | None = None,
                           stream_options: dict | None = None):
    """Reply to ``messages`` through the model's chat template (``engine.chat``): a ``chat.completion``
    dict, or with ``stream`` an iterator of ``chat.completion.chunk`` dicts. Tools and functions are
    not supported; ``response_format`` constrains the reply to JSON (see ``response_grammar``)."""
    _unsupported(functions=functions, function_call=function_call, tools=tools, tool_choice=tool_choice)
    chat = Chat(llm)
    tokens = chat.prompt_tokens(messages)
    stops = [*chat.format.stop, *([stop] if isinstance(stop, str) else stop or ())]
    json_grammar = response_grammar(response_format)
    completion = create_completion(
        llm, tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p, typical_p=typical_p,
        logprobs=(top_logprobs or 0) if logprobs else None, stop=stops, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, repeat_penalty=repeat_penalty, top_k=top_k, stream=stream, seed=seed,
        tfs_z=tfs_z, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
        logits_processor=logits_processor, grammar=json_grammar or grammar, logit_bias=logit_bias,
        stream_options=stream_options)
    return _chat_chunks(completion) if stream else _chat_result(completion)


def _chat_logprobs(logprobs: dict | None) -> dict | None:
    if logprobs is None:
        return None
    return {"content": [{"token": token, "bytes": None, "logprob": logprob,
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()]}
                        for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                                       logprobs["top_logprobs"])],
            "refusal": None}


def _chat_result(completion: dict) -> dict:
    choice = completion["choices"][0]
    return {"id": "chat" + completion["id"], "object": "chat.completion", "created": completion["created"],
            "model": completion["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": choice["text"]},
                         "logprobs": _chat_logprobs(choice["logprobs"]), "finish_reason": choice["finish_reason"]}],
            "usage": completion["usage"]}


def _chat_chunks(chunks: Iterator[dict]) -> Iterator[dict[str, Any]]:
    """The completion's chunks as chat deltas: the role first, then the text, then the finish reason."""
    try:
        for i, chunk in enumerate(chunks):
            head = {"id": "chat" + chunk["id"], "model": chunk["model"], "created": chunk["created"],
                    "object": "chat.completion.chunk"}
            if i == 0:
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                            "finish_reason": None}]}
            if not chunk["choices"]:  # the usage, asked for with stream_options
                yield {**head, "choices": [], "usage": chunk["usage"]}
                continue
            choice = chunk["choices"][0]
            delta = {"content": choice["text"]} if choice["finish_reason"] is None else {}
            yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": _chat_logprobs(choice["logprobs"]),
                                        "finish_reason": choice["finish_reason"]}]}
    finally:
        chunks.close()
