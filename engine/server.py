"""``llamanp serve``: an OpenAI-compatible HTTP server (Starlette on uvicorn, the ``llamanp[server]`` extra).

    GET  /health               {"status": "ok", "slots_idle": n, "slots_total": n}
    GET  /v1/models            the one model served
    POST /v1/completions       engine.completion.create_completion (server-sent events with "stream")
    POST /v1/chat/completions  engine.completion.create_chat_completion
    POST /v1/embeddings        engine.embedding.create_embedding (float or base64 vectors)

The ``parallel`` slots are sequences of one model in one KV cache, evaluated together by
``engine.scheduler`` (continuous batching: each step one forward pass over the next token
of every generating request and chunks of new prompts). A request has a slot to itself
from its first token to its last, served on a worker thread that samples with the
library's own code; the model is batch invariant, so nothing a request computes depends
on the other requests. A new request takes the idle slot whose cache holds the longest
prefix of its prompt. At most ``queue`` more requests wait for a slot; beyond that the
server answers 503 at once. A client that goes away mid-stream has its generation
closed at the next token, and its slot returns to the pool.

Errors are OpenAI's JSON, ``{"error": {"message", "type", "param", "code"}}``: 400 for a
request the library refuses, 401 for a missing or wrong API key, 404 for an unknown
path, 413 for a body over ``max_body`` bytes, 503 when the queue is full.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import LlamaError

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
except ImportError:  # the optional extra is missing: say how to get it, where it is needed
    uvicorn = None

MAX_BODY = 1 << 20  # bytes of a request body; a prompt this long is far past any context
DONE = object()     # what a stream's worker puts after its last chunk

COMPLETION_FIELDS = {  # the OpenAI fields (and llama-cpp-python's extensions) each endpoint passes on
    "completions": ("prompt", "max_tokens", "temperature", "top_p", "min_p", "typical_p", "logprobs", "echo",
                    "stop", "frequency_penalty", "presence_penalty", "repeat_penalty", "top_k", "seed",
                    "mirostat_mode", "mirostat_tau", "mirostat_eta", "grammar", "logit_bias", "stream_options"),
    "chat": ("messages", "max_tokens", "temperature", "top_p", "min_p", "typical_p", "stop", "frequency_penalty",
             "presence_penalty", "repeat_penalty", "top_k", "seed", "mirostat_mode", "mirostat_tau", "mirostat_eta",
             "response_format", "grammar", "logit_bias", "logprobs", "top_logprobs", "stream_options"),
    "embeddings": ("input",),
}
IGNORED_FIELDS = {"model", "user", "stream", "n", "best_of", "suffix", "encoding_format"}


class RequestError(Exception):
    """A request answered with an OpenAI error: ``status``, a message and the error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(error), "type": error.kind, "param": None, "code": error.code}},
                        status_code=error.status)


class Slots:
    """The scheduler's ``parallel`` slots (``engine.scheduler``), handed out one per request, with a bounded wait."""

    def __init__(self, model_path: str, parallel: int, queue_size: int, n_ctx: int | None, n_threads: int | None,
                 ggml_isa: str = "auto"):
        from .llama import Llama
        from .scheduler import Scheduler
        self.scheduler = Scheduler(Llama(model_path, n_ctx=n_ctx, n_threads=n_threads, batch_invariant=True,
                                         ggml_isa=ggml_isa),
                                   parallel)
        self.total, self.limit = parallel, parallel + queue_size
        self.admitted = 0  # requests running or waiting; touched only on the event loop's thread
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="llamanp-slot")

    def admit(self) -> None:
        """Count a request in, or refuse it with 503 when the slots and the queue are full."""
        if self.admitted >= self.limit:
            raise RequestError(503, f"the server is busy: {self.total} requests running and "
                                    f"{self.limit - self.total} waiting; retry later", "server_error",
                               "queue_full")
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    async def run(self, work, prompt=None):
        """``work(llm)`` on a worker thread with a slot of its own, the one whose cache holds the longest
        prefix of ``prompt(llm)``'s tokens; the slot returns to the pool after."""
        def with_slot():
            with self.scheduler.lease(_tokens_or_none(prompt, self.scheduler.llm) or ()) as llm:
                return work(llm)
        return await asyncio.get_running_loop().run_in_executor(self.pool, with_slot)

    @property
    def n_idle(self) -> int:
        return self.scheduler.n_idle

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.scheduler.close()


def _tokens_or_none(prompt, llm) -> list[int] | None:
    """A request's prompt tokens, or None where there are none or the request is bad (the library call
    itself then says why)."""
    if prompt is None:
        return None
    try:
        return prompt(llm)
    except (ValueError, TypeError, LookupError):
        return None


class EventStream(StreamingResponse if uvicorn is not None else object):
    """Server-sent events that call ``on_close`` however the response ends: sent in full, or cut
    short by a client that went away (whichever way the ASGI server reports it)."""

    def __init__(self, events, on_close):
        super().__init__(events, media_type="text/event-stream")
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(model_path: str, *, parallel: int = 1, queue_size: int = 8, api_key: str | None = None,
               n_ctx: int | None = None, n_threads: int | None = None, pooling: str | None = None,
               max_body: int = MAX_BODY, ggml_isa: str = "auto") -> "Starlette":
    """The ASGI application serving ``model_path`` (see the module docstring)."""
    if uvicorn is None:
        raise LlamaError('the server needs Starlette and uvicorn: pip install "llamanp[server]"')
    from .chat import Chat
    from .completion import create_chat_completion, create_completion, prompt_tokens
    from .embedding import create_embedding

    slots = Slots(model_path, parallel, queue_size, n_ctx, n_threads, ggml_isa)
    model_id = Path(model_path).name
    created = int(time.time())

    async def checked_body(request: Request) -> dict:
        """The request's JSON object, after the API key and the size limit are checked."""
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise RequestError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                               "authentication_error", "invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise RequestError(413, f"the request body is over {max_body} bytes")
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > max_body:
                raise RequestError(413, f"the request body is over {max_body} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise RequestError(400, f"the body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise RequestError(400, "the body must be a JSON object")
        return data

    def options(data: dict, endpoint: str) -> dict:
        """The library's keyword arguments from a request; a field it does not know is an error."""
        unknown = set(data) - set(COMPLETION_FIELDS[endpoint]) - IGNORED_FIELDS
        if unknown:
            raise RequestError(400, f"unsupported field {sorted(unknown)[0]!r}")
        if data.get("n", 1) != 1 or data.get("best_of", 1) != 1:
            raise RequestError(400, "only n=1 (and best_of=1) are supported")
        if data.get("suffix") is not None:
            raise RequestError(400, "suffix (infill) is not supported")
        kwargs = {k: v for k, v in data.items() if k in COMPLETION_FIELDS[endpoint]}
        if endpoint == "completions" and isinstance(kwargs.get("prompt"), list) and kwargs["prompt"] \
                and all(isinstance(p, str) for p in kwargs["prompt"]):
            if len(kwargs["prompt"]) != 1:
                raise RequestError(400, "a batch of prompts is not supported: send one prompt per request")
            kwargs["prompt"] = kwargs["prompt"][0]
        return {**kwargs, "model": model_id}

    def library_call(function, kwargs: dict):
        """``function(llm, **kwargs)``, with the library's refusals turned into 400s."""
        def work(llm):
            try:
                return function(llm, **kwargs)
            except (ValueError, TypeError) as e:  # LlamaError's argument family, and wrong JSON types
                raise RequestError(400, str(e)) from None
        return work

    def prompt_of(endpoint: str, kwargs: dict):
        """How the worker finds a request's prompt tokens, to pick the slot with the most of them cached."""
        if endpoint == "chat":
            return lambda llm: Chat(llm).prompt_tokens(kwargs.get("messages"))
        return lambda llm: prompt_tokens(llm, kwargs.get("prompt"))

    async def serve(request: Request, endpoint: str, function):
        try:
            data = await checked_body(request)
            kwargs = options(data, endpoint)
            kwargs["stream"] = data.get("stream", False) is True
            slots.admit()
        except RequestError as e:
            return error_response(e)
        if not kwargs["stream"]:
            try:
                return JSONResponse(await slots.run(library_call(function, kwargs), prompt_of(endpoint, kwargs)))
            except RequestError as e:
                return error_response(e)
            finally:
                slots.leave()
        return await stream(request, library_call(function, kwargs), prompt_of(endpoint, kwargs))

    async def stream(request: Request, work, prompt):
        """Server-sent events: one ``data: {chunk}`` per chunk, then ``data: [DONE]``. The chunks come
        from a worker thread through a queue; an error before the first chunk is an ordinary error
        response, and a client that disconnects has its generation closed at the next chunk."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()

        def produce(llm):
            try:
                iterator = work(llm)
                try:
                    for chunk in iterator:
                        loop.call_soon_threadsafe(chunks.put_nowait, chunk)
                        if gone.is_set():
                            break
                finally:
                    iterator.close()  # frees the Llama's lock at once
            except Exception as e:  # the first chunk's refusal, or a failure mid-stream
                loop.call_soon_threadsafe(chunks.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, DONE)

        task = asyncio.ensure_future(slots.run(produce, prompt))
        task.add_done_callback(lambda _: slots.leave())  # the slot is back, whatever ended the stream
        first = await chunks.get()
        if isinstance(first, Exception) or first is DONE:
            error = first if isinstance(first, RequestError) else RequestError(500, f"internal error: {first}",
                                                                               "server_error")
            return error_response(error)

        async def events():
            item = first
            while item is not DONE:
                if isinstance(item, Exception):  # a failure after the first chunk: end the stream with it
                    yield "data: " + json.dumps({"error": {"message": str(item), "type": "server_error"}}) + "\n\n"
                else:
                    yield "data: " + json.dumps(item) + "\n\n"
                item = await chunks.get()
            yield "data: [DONE]\n\n"

        return EventStream(events(), on_close=gone.set)

    async def completions(request: Request):
        return await serve(request, "completions", create_completion)

    async def chat_completions(request: Request):
        return await serve(request, "chat", create_chat_completion)

    async def embeddings(request: Request):
        try:
            data = await checked_body(request)
            kwargs = options(data, "embeddings")
            fmt = data.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise RequestError(400, f"encoding_format must be float or base64, got {fmt!r}")
            slots.admit()
        except RequestError as e:
            return error_response(e)
        try:
            result = await slots.run(library_call(create_embedding, {**kwargs, "pooling": pooling}))
        except RequestError as e:
            return error_response(e)
        finally:
            slots.leave()
        if fmt == "base64":
            for item in result["data"]:
                item["embedding"] = base64.b64encode(np.asarray(item["embedding"], "<f4").tobytes()).decode()
        return JSONResponse(result)

    async def models(request: Request):
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return error_response(RequestError(401, "invalid or missing API key", "authentication_error",
                                               "invalid_api_key"))
        return JSONResponse({"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                                         "owned_by": "llamanp"}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "slots_idle": slots.n_idle, "slots_total": slots.total})

    async def not_found(request: Request, exc):
        return error_response(RequestError(404, f"no route {request.url.path}"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        slots.close()

    return Starlette(routes=[Route("/health", health), Route("/v1/models", models),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/v1/embeddings", embeddings, methods=["POST"])],
                     exception_handlers={404: not_found, 405: not_found},
                     lifespan=lifespan)


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8080, **options) -> None:
    """Run the server until interrupted."""
    app = create_app(model_path, **options)
    uvicorn.run(app, host=host, port=port, log_level="warning")
