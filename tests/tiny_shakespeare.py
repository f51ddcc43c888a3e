"""The tiny Shakespeare model's data split, its baselines and its llama.cpp checks.

Shared by ``scripts/train_tiny.py`` (which needs torch) and the tests (which
must not): the held-out split, the unigram baseline, a held-out perplexity
computed by llama.cpp, and Q4_0/Q4_K_M/... versions of the shipped file made by
llama.cpp's quantiser.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tests.model_files import quantize_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_PATH = ROOT / "engine" / "data" / "tiny-shakespeare.gguf"
TOKENIZER_PATH = ROOT / "engine" / "data" / "tiny-shakespeare.model"
HELD_OUT_FRACTION = 0.05

BOS_ID = 1


def split_corpus(text: str, held_out: float = HELD_OUT_FRACTION) -> tuple[str, str]:
    """The corpus as (training text, held-out text): the last ``held_out`` share is held out."""
    cut = int(len(text) * (1.0 - held_out))
    return text[:cut], text[cut:]


def unigram_nll(train_ids: Sequence[int], held_ids: Sequence[int], n_vocab: int) -> float:
    """Mean negative log-likelihood (nats) of the held-out tokens under training-set token frequencies.

    Add-one smoothing keeps tokens never seen in training finite.
    """
    counts = np.bincount(np.asarray(train_ids), minlength=n_vocab) + 1.0  # (n_vocab,)
    log_p = np.log(counts) - np.log(counts.sum())
    return float(-log_p[np.asarray(held_ids)].mean())


def chunks(tokens: Sequence[int], n_ctx: int, n_chunks: int | None = None) -> list[list[int]]:
    """Consecutive evaluation windows of ``n_ctx`` tokens: BOS then ``n_ctx - 1`` text tokens."""
    span = n_ctx - 1
    count = len(tokens) // span if n_chunks is None else min(n_chunks, len(tokens) // span)
    return [[BOS_ID, *tokens[i * span:(i + 1) * span]] for i in range(count)]


def next_token_nll(logits: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of each next token of ``window`` given the logits at each position."""
    z = logits[:-1].astype(np.float64)  # (n - 1, n_vocab)
    log_z = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    targets = np.asarray(window[1:])
    return log_z - z[np.arange(len(targets)), targets]  # (n - 1,)


def llama_cpp_nll(llm, tokens: Sequence[int], n_chunks: int | None = None) -> float:
    """Mean next-token NLL (nats) of ``tokens`` as computed by a llama.cpp model.

    ``llm`` is a ``llama_cpp.Llama`` opened with ``logits_all=True``; each window
    is evaluated from an empty cache, every position after BOS is scored.
    """
    losses = []
    for window in chunks(tokens, llm.n_ctx(), n_chunks):
        llm.reset()
        llm.eval(window)
        losses.append(next_token_nll(np.array(llm.scores[:len(window)]), window))
    return float(np.concatenate(losses).mean())


def quantized_model(qtype: str, cache_dir: Path | str) -> Path:
    """The shipped Q8_0 model requantised by llama.cpp to ``qtype`` (Q4_0, Q4_K_M, ...), built once into ``cache_dir``.

    These versions exist for greedy-parity tests against llama.cpp on quantised weights.
    """
    path = Path(cache_dir) / f"tiny-shakespeare-{qtype}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize_model(MODEL_PATH, path.with_suffix(".partial"), qtype, allow_requantize=True).replace(path)
    return path


def report(corpus: Path, prompt: str = "ROMEO:\n", n_tokens: int = 120, seed: int = 1234) -> None:
    """Print the model card's numbers: held-out perplexities and a greedy and a sampled sample."""
    import llama_cpp
    import sentencepiece as spm

    train, held_out = split_corpus(corpus.read_text(encoding="utf-8"))
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_PATH))
    llm = llama_cpp.Llama(str(MODEL_PATH), n_ctx=256, logits_all=True, n_threads=2, seed=seed, verbose=False)
    held_ids = llm.tokenize(held_out.encode(), add_bos=False)
    windows = chunks(held_ids, llm.n_ctx())
    print(f"held-out: {len(held_out)} characters, {len(held_ids)} tokens, "
          f"{len(windows)} windows of {llm.n_ctx()} (BOS + {llm.n_ctx() - 1} tokens)")
    print(f"llama.cpp held-out perplexity: {np.exp(llama_cpp_nll(llm, held_ids)):.2f}")
    print(f"unigram baseline perplexity: {np.exp(unigram_nll(sp.encode(train), held_ids, sp.get_piece_size())):.2f}")
    greedy = llm(prompt, max_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    print(f"--- greedy, prompt {prompt!r}\n{prompt}{greedy}")
    sampled = llm(prompt, max_tokens=n_tokens, temperature=0.8, top_k=40, top_p=0.95, repeat_penalty=1.0,
                  seed=seed)["choices"][0]["text"]
    print(f"--- sampled (temperature 0.8, top-k 40, top-p 0.95, seed {seed}), prompt {prompt!r}\n{prompt}{sampled}")


if __name__ == "__main__":
    report(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "tinyshakespeare.txt")
