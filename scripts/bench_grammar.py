"""Benchmark: the cost of grammar masking per generated token.

Samples JSON under the built-in JSON grammar (or a GBNF file) with random
logits over the llama2 vocabulary and reports the mean milliseconds spent
computing each token's mask, and accepting it, over all generated tokens.

    python -m scripts.bench_grammar [--tokens N] [--seeds K] [--grammar FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from engine.grammar import Grammar
from engine.grammar_sampler import GrammarSampler
from engine.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests" / "data" / "ggml-vocab-llama-spm.gguf"


def run(grammar: Grammar, tokenizer: Tokenizer, n_tokens: int, seed: int,
        short_bias: float) -> tuple[list[float], list[float], int]:
    """Mask and accept times (s) of each token of one random generation, and the tokens made.
    short_bias is added to the logits of 1- and 2-byte pieces: more punctuation, more states."""
    rng = np.random.default_rng(seed)
    sampler = GrammarSampler(grammar, tokenizer.pieces, tokenizer.eos, lambda logits: int(np.argmax(logits)))
    bias = short_bias * np.array([len(p) <= 2 for p in tokenizer.pieces], dtype=np.float32)
    mask_times, accept_times = [], []
    for _ in range(n_tokens):
        t0 = time.perf_counter()
        allowed = sampler.allowed_tokens()
        t1 = time.perf_counter()
        logits = np.where(allowed, rng.standard_normal(len(allowed)).astype(np.float32) + bias, -np.inf)
        token = int(np.argmax(logits))
        t2 = time.perf_counter()
        sampler.accept(token)
        t3 = time.perf_counter()
        mask_times.append(t1 - t0)
        accept_times.append(t3 - t2)
        if token == tokenizer.eos:
            break
    return mask_times, accept_times, len(mask_times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="tokens per generation")
    parser.add_argument("--seeds", type=int, default=5, help="generations (each with a fresh grammar)")
    parser.add_argument("--grammar", type=Path, help="a GBNF file (default: the built-in JSON grammar)")
    parser.add_argument("--short-bias", type=float, default=0.0,
                        help="logit bonus for 1-2 byte pieces (4 gives punctuation-heavy JSON)")
    args = parser.parse_args(argv)

    tokenizer = Tokenizer.from_gguf(VOCAB)
    text = args.grammar.read_text() if args.grammar else None
    masks, accepts, total = [], [], 0
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        grammar = Grammar.from_string(text) if text else Grammar.json()  # cold caches each time
        m, a, n = run(grammar, tokenizer, args.tokens, seed, args.short_bias)
        masks += m
        accepts += a
        total += n
    wall = time.perf_counter() - t0
    result = {
        "tokens": total,
        "mask_ms_mean": 1e3 * float(np.mean(masks)),
        "mask_ms_p50": 1e3 * float(np.median(masks)),
        "mask_ms_max": 1e3 * float(np.max(masks)),
        "accept_ms_mean": 1e3 * float(np.mean(accepts)),
        "wall_s": wall,
    }
    print(f"grammar masking over {len(tokenizer.pieces)} pieces, {total} tokens in {args.seeds} generations: "
          f"mask {result['mask_ms_mean']:.2f} ms/token mean (p50 {result['mask_ms_p50']:.2f}, "
          f"max {result['mask_ms_max']:.1f}), accept {result['accept_ms_mean']:.3f} ms/token")
    return result


if __name__ == "__main__":
    main()
