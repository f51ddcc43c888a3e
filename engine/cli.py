"""The ``llamanp`` command line: one subcommand per thing a user does with a model.

Every command takes ``--model`` (default: the tiny Shakespeare model that ships
with the package). Every failure ends in a one-line message on stderr, never a
traceback, and a non-zero exit status: 2 for an option argparse refuses, 130 for
Ctrl-C, else 1 (a missing file, a corrupt model, a value the library refuses).
Progress on long work goes to stderr so stdout stays clean for the result.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import DEFAULT_MODEL
from .errors import LlamaError, ModelError
from .gguf import read_gguf
from .model import HParams
from .isa import ISAS, resolve_isa
from .models import KNOWN_MODELS, pull, resolve


def note(message: str) -> None:
    """Progress and statistics, on stderr."""
    print(message, file=sys.stderr, flush=True)


def open_model(args):
    from .llama import Llama

    return Llama(args.model, n_ctx=args.ctx, n_threads=args.threads, ggml_isa=args.ggml_isa)


def describe_value(value) -> str:
    """A metadata value on one line: long arrays are summarised by length and element type."""
    if isinstance(value, np.ndarray):
        head = ", ".join(str(v) for v in value[:4].tolist())
        return f"[{head}{', ...' if len(value) > 4 else ''}] ({len(value)} × {value.dtype})"
    if isinstance(value, list):
        head = ", ".join(repr(v) for v in value[:4])
        return f"[{head}{', ...' if len(value) > 4 else ''}] ({len(value)} items)"
    return repr(value) if isinstance(value, str) else str(value)


def cmd_info(args) -> None:
    gguf = read_gguf(resolve(args.model))
    print(f"{gguf.path}: GGUF v{gguf.version}, {len(gguf.metadata)} metadata keys, {len(gguf.tensors)} tensors")
    for key, value in gguf.metadata.items():
        print(f"  {key} = {describe_value(value)}")
    if gguf.tensors:
        width = max(len(name) for name in gguf.tensors)
        print(f"\n  {'tensor':<{width}}  {'type':<5}  {'shape':<14}  {'bytes':>12}")
        for info in gguf.tensors.values():
            shape = "×".join(str(d) for d in info.shape)
            print(f"  {info.name:<{width}}  {info.type.name:<5}  {shape:<14}  {info.n_bytes:>12,}")
        total = sum(info.n_bytes for info in gguf.tensors.values())
        n_params = sum(info.n_elements for info in gguf.tensors.values())
        print(f"\n  {n_params:,} parameters in {total:,} bytes ({8 * total / n_params:.2f} bits per weight)")
    try:
        print(f"\n  family {HParams.from_gguf(gguf).switches()}")
    except ModelError as e:
        print(f"\n  not loadable: {e}")
    isa = resolve_isa(args.ggml_isa)
    print(f"  ggml_isa {isa} (--ggml-isa {args.ggml_isa}): the exact backends compute the logits of llama.cpp "
          f"built for {isa.upper()}")


def cmd_tokenize(args) -> None:
    """Each token: its id and, between quotes, the text it stands for (see tokenizer.readable)."""
    from .tokenizer import Tokenizer, readable

    tok = Tokenizer.from_gguf(resolve(args.model))
    ids = tok.tokenize(read_prompt(args), add_bos=args.bos, special=args.special)
    for i in ids:
        print(f"{i:>8}  '{readable(tok.token_to_piece(i, special=True))}'")
    note(f"{len(ids)} tokens")


def make_sampler_from_args(args):
    from .sampling import make_sampler

    options = {name: getattr(args, name) for name in SAMPLER_OPTIONS[args.sampler] if getattr(args, name) is not None}
    if args.sampler != "greedy" and args.seed is not None:
        options["seed"] = args.seed
    if args.sampler == "mirostat_v1":
        options["n_vocab"] = args.n_vocab
    return make_sampler(args.sampler, **options)


def load_grammar(args):
    from .grammar import Grammar

    if args.grammar and args.json_schema:
        raise LlamaError("give --grammar or --json-schema, not both")
    if args.grammar:
        return Grammar.from_string(read_file(args.grammar))
    if args.json_schema:
        try:
            schema = json.loads(read_file(args.json_schema))
        except json.JSONDecodeError as e:
            raise LlamaError(f"{args.json_schema}: not valid JSON ({e})") from None
        return Grammar.from_json_schema(schema)
    return None


def cmd_generate(args) -> None:
    prompt = read_prompt(args)
    with open_model(args) as llm:
        args.n_vocab = llm.n_vocab
        sampler = make_sampler_from_args(args)
        grammar = load_grammar(args)
        start = time.perf_counter()
        n_prompt = len(llm.tokenize(prompt))
        n = 0
        print(prompt, end="", flush=True)
        for piece in llm.generate(prompt, sampler=sampler, max_tokens=args.max_tokens, stop=args.stop or (),
                                  grammar=grammar, stop_at_context_end=True):
            print(piece, end="", flush=True)
            n += 1
        print()
        elapsed = time.perf_counter() - start
        note(f"[{n_prompt} prompt tokens, {n} generated pieces in {elapsed:.2f} s]")


def cmd_chat(args) -> None:
    from .chat import Chat

    with open_model(args) as llm:
        args.n_vocab = llm.n_vocab
        chat = Chat(llm, system=args.system, format=args.format)
        sampler = make_sampler_from_args(args)
        note("chat: /reset starts over, /exit (or end of input) quits")
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if line.strip() == "/exit":
                break
            if line.strip() == "/reset":
                chat.reset()
                continue
            for piece in chat.stream(line, sampler=sampler, max_tokens=args.max_tokens):
                print(piece, end="", flush=True)
            print()


def cmd_top(args) -> None:
    from .sampling import probabilities
    from .tokenizer import readable

    with open_model(args) as llm:
        llm.update(read_prompt(args))
        p = probabilities(llm.logits)
        order = np.argsort(-p, kind="stable")
        rows = [("most likely", order[:args.k]), ("least likely", order[::-1][:args.k])]
        for title, ids in rows:
            print(f"{title}:")
            for i in ids:
                shown = f"'{readable(llm.tokenizer.token_to_piece(int(i), special=True))}'"
                print(f"  {int(i):>7}  {shown:<24} {p[i]:.6g}")


def cmd_perplexity(args) -> None:
    """Perplexity as llama-perplexity reports it: windows of n_ctx tokens, each starting with BOS,
    scored on their second half."""
    from .sampling import log_softmax

    text = read_file(args.file)
    with open_model(args) as llm:
        tokens = llm.tokenize(text, add_bos=True)
        n_ctx = llm.n_ctx
        n_chunks = len(tokens) // n_ctx
        if args.chunks:
            n_chunks = min(n_chunks, args.chunks)
        if n_chunks == 0:
            raise LlamaError(f"{args.file}: {len(tokens)} tokens is fewer than one window of n_ctx={n_ctx}")
        nll, count = 0.0, 0
        first = n_ctx // 2
        for c in range(n_chunks):
            window = tokens[c * n_ctx:(c + 1) * n_ctx]
            window[0] = llm.bos
            logits = llm.eval_logits(window)                                   # (n_ctx, n_vocab)
            for pos in range(first, n_ctx - 1):
                nll -= float(log_softmax(logits[pos])[window[pos + 1]])
                count += 1
            note(f"[{c + 1}/{n_chunks}] perplexity so far {math.exp(nll / count):.4f}")
        print(f"perplexity: {math.exp(nll / count):.4f} over {count} tokens ({n_chunks} windows of {n_ctx})")


def cmd_bench(args) -> None:
    with open_model(args) as llm:
        prompt = [llm.bos] + [int(t) for t in np.random.default_rng(0).integers(3, llm.n_vocab, args.n_prompt - 1)]
        note(f"bench: prefill of {args.n_prompt} tokens")
        start = time.perf_counter()
        llm.update(prompt, n_past=0)
        prefill = time.perf_counter() - start
        note(f"bench: decode of {args.n_gen} tokens")
        start = time.perf_counter()
        for _ in range(args.n_gen):
            llm.update([int(np.argmax(llm.logits))])
        decode = time.perf_counter() - start
        print(f"prefill: {args.n_prompt / prefill:8.2f} tok/s ({args.n_prompt} tokens)")
        print(f"decode:  {args.n_gen / decode:8.2f} tok/s ({args.n_gen} tokens)")


def cmd_pull(args) -> None:
    print(pull(args.name))


def read_prompt(args) -> str:
    """The prompt, given as the positional argument or with -p (not both); standard input when '-' or absent."""
    if args.prompt is not None and args.prompt_option is not None:
        raise LlamaError("give the prompt once: as an argument or with -p, not both")
    value = args.prompt if args.prompt is not None else args.prompt_option
    return sys.stdin.read() if value in (None, "-") else value


def read_file(path: str) -> str:
    """A UTF-8 text file's contents."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlamaError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def count(text: str) -> int:
    """An argparse type: an integer of at least 1 (its name is argparse's "invalid count value")."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


SAMPLER_OPTIONS = {
    "greedy": [],
    "mirostat_v2": ["tau", "eta"],
    "mirostat_v1": ["tau", "eta"],
    "chain": ["temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "penalty_last_n",
              "frequency_penalty", "presence_penalty"],
}


def cmd_serve(args) -> None:
    from .server import serve

    note(f"serving {args.model} on http://{args.host}:{args.port}/v1 ({args.parallel} slots, queue {args.queue})")
    serve(args.model, host=args.host, port=args.port, parallel=args.parallel, queue_size=args.queue,
          api_key=args.api_key, n_ctx=args.ctx, n_threads=args.threads, pooling=args.pooling, ggml_isa=args.ggml_isa)


MODEL_HELP = "GGUF file, or the name of a pulled model (default: the embedded model)"


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=str(DEFAULT_MODEL), help=MODEL_HELP)
    p.add_argument("-c", "--ctx", type=int, help="context size (default: the model's)")
    p.add_argument("-t", "--threads", type=int, help="threads (default: all cores)")
    add_isa_option(p)


def add_isa_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ggml-isa", choices=("auto", *ISAS), default="auto",
                   help="whose logits to reproduce: llama.cpp built for avx2 or avx512 (default: auto, "
                        "$LLAMANP_GGML_ISA or the build llama.cpp makes for this CPU)")


def add_prompt_options(p: argparse.ArgumentParser, what: str = "prompt text") -> None:
    """The same two ways for every command: ``llamanp CMD "text"`` or ``llamanp CMD -p "text"``."""
    p.add_argument("prompt", nargs="?", help=f"{what} ('-' or absent: read standard input)")
    p.add_argument("-p", "--prompt", dest="prompt_option", metavar="PROMPT", help=f"{what}, as an option")


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=list(SAMPLER_OPTIONS), default="mirostat_v2")
    p.add_argument("--seed", type=int, help="seed of the sampler's random draws")
    p.add_argument("-n", "--max-tokens", type=int, default=128)
    p.add_argument("--tau", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--temperature", "--temp", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--typical-p", type=float)
    p.add_argument("--repeat-penalty", type=float)
    p.add_argument("--penalty-last-n", type=int)
    p.add_argument("--frequency-penalty", type=float)
    p.add_argument("--presence-penalty", type=float)


class Parser(argparse.ArgumentParser):
    """argparse whose errors (its subcommands' too) take one line that points at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llamanp", description="A LLaMA inference engine in NumPy and Cython.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("generate", help="continue a prompt, streaming to stdout")
    add_model_options(p)
    add_prompt_options(p)
    add_sampler_options(p)
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--grammar", help="GBNF grammar file constraining the output")
    p.add_argument("--json-schema", help="JSON Schema file constraining the output")
    p.set_defaults(run=cmd_generate)

    p = commands.add_parser("chat", help="talk with the model; /reset starts over, /exit quits")
    add_model_options(p)
    add_sampler_options(p)
    p.add_argument("--system", help="system message")
    p.add_argument("--format", help="chat format (default: the model's own template, else llama-2)")
    p.set_defaults(run=cmd_chat)

    p = commands.add_parser("tokenize", help="show the token ids and pieces of a text")
    add_model_options(p)
    add_prompt_options(p, "text")
    p.add_argument("--bos", action="store_true", help="prepend BOS")
    p.add_argument("--special", action="store_true", help="parse control tokens written in the text")
    p.set_defaults(run=cmd_tokenize)

    p = commands.add_parser("top", help="the k most and least likely next tokens after a prompt")
    add_model_options(p)
    add_prompt_options(p)
    p.add_argument("-k", type=count, default=10)
    p.set_defaults(run=cmd_top)

    p = commands.add_parser("info", help="a model's metadata and tensor table")
    p.add_argument("-m", "--model", default=str(DEFAULT_MODEL), help=MODEL_HELP)
    add_isa_option(p)
    p.set_defaults(run=cmd_info)

    p = commands.add_parser("perplexity", help="perplexity of a text file, like llama-perplexity")
    add_model_options(p)
    p.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    p.add_argument("--chunks", type=count, help="score at most this many windows")
    p.set_defaults(run=cmd_perplexity)

    p = commands.add_parser("bench", help="prefill and decode speed of this engine")
    add_model_options(p)
    p.add_argument("--n-prompt", type=count, default=64)
    p.add_argument("--n-gen", type=count, default=32)
    p.set_defaults(run=cmd_bench)

    p = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (needs llamanp[server])")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--parallel", type=count, default=1,
                   help="requests served at once, batched into one forward pass per step (docs/serving.md)")
    p.add_argument("--queue", type=non_negative, default=8, help="requests that may wait for a slot; more get 503")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests")
    p.add_argument("--pooling", choices=["mean", "last", "cls"], help="embedding pooling (default: the model's, "
                   "else mean)")
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser("pull", help="download a known model into the cache ($LLAMANP_CACHE or ~/.cache/llamanp)")
    p.add_argument("name", help=f"one of: {', '.join(KNOWN_MODELS)}")
    p.set_defaults(run=cmd_pull)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command. A failure ends in one line on stderr and exit status 1: what the user can
    fix (a missing file, a corrupt model, a value the library refuses) as an error, anything else
    as a bug. (argparse's refusals exit with status 2; Ctrl-C is the caller's: ``engine.__main__.run``
    turns it into exit status 130.)"""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except BrokenPipeError:  # the reader went away (`llamanp info | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except (LlamaError, ValueError, OSError, MemoryError) as e:
        sys.exit(f"llamanp: error: {one_line(e)}")
    except Exception as e:
        sys.exit(f"llamanp: internal error (a bug; please report it): {type(e).__name__}: {one_line(e)}")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a template's or a parser's may span several)."""
    return " ".join(str(error).split()) or type(error).__name__
