"""Tokenizer speed: ours, the sentencepiece library and llama.cpp on the same text, side by side.

    python scripts/bench_tokenizer.py [TEXT_FILE] [--repeats N]
    python scripts/bench.py tokenizer [TEXT_FILE] [--repeats N]

TEXT_FILE defaults to tiny Shakespeare (about 1 MB of English) from the shared
corpus folder when it is there. Each tokenizer's best time of N runs is shown,
with its ratio to ours, and the token ids are checked to be identical.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests" / "data" / "ggml-vocab-llama-spm.gguf"
SP_MODEL = ROOT / "tests" / "data" / "llama2-tokenizer.model"
SHAKESPEARE = Path("/work/shared/corpus/tinyshakespeare.txt")
sys.path.insert(0, str(ROOT))

from engine.tokenizer import Tokenizer  # noqa: E402


def best_time(tokenize, text, repeats: int) -> tuple[float, list[int]]:
    """The fastest of ``repeats`` runs of ``tokenize(text)``, and its ids."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ids = tokenize(text)
        best = min(best, time.perf_counter() - start)
    return best, list(ids)


def tokenizers() -> dict:
    """name -> a function from text to ids without BOS, for each tokenizer compared."""
    import llama_cpp
    import sentencepiece

    ours = Tokenizer.from_gguf(VOCAB)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))
    llm = llama_cpp.Llama(model_path=str(VOCAB), vocab_only=True, verbose=False)
    return {
        "llamanp": ours.tokenize,
        "sentencepiece": sp.encode,
        "llama.cpp": lambda text: llm.tokenize(text.encode(), add_bos=False, special=False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text_file", nargs="?", type=Path,
                        default=SHAKESPEARE if SHAKESPEARE.exists() else None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.text_file is None:
        parser.error(f"{SHAKESPEARE} is not here: give a text file to tokenize")
    text = args.text_file.read_text(encoding="utf-8")
    n_bytes = len(text.encode())
    print(f"{args.text_file.name}: {n_bytes / 1e6:.2f} MB, best of {args.repeats}")
    print(f"{'tokenizer':<14} {'seconds':>8} {'MB/s':>7} {'vs ours':>8} {'tokens':>8}  ids")
    results = {name: best_time(tokenize, text, args.repeats) for name, tokenize in tokenizers().items()}
    ours_time, ours_ids = results["llamanp"]
    for name, (seconds, ids) in results.items():
        print(f"{name:<14} {seconds:8.3f} {n_bytes / 1e6 / seconds:7.2f} {seconds / ours_time:7.2f}x "
              f"{len(ids):8d}  {'same' if ids == ours_ids else 'DIFFERENT'}")
    return 0 if all(ids == ours_ids for _, ids in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
