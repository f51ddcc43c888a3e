"""Tokenizer speed: ours and llama.cpp (and the sentencepiece library) on the same text, side by side.

    python scripts/bench.py tokenizer [TEXT_FILE] [--repeats N] [--cache DIR]
    python scripts/bench_tokenizer.py [TEXT_FILE] [--repeats N] [--cache DIR]

Two vocabularies: LLaMA 2's SentencePiece one (tests/data) and Llama 3's byte-level
BPE one (llama.cpp's models/ggml-vocab-llama-bpe.gguf, fetched once into the cache
dir from the pinned llama-cpp-python sdist, as the tests fetch it). TEXT_FILE
defaults to tiny Shakespeare (about 1 MB of English) from the shared corpus folder
when it is there. Each tokenizer's best time of N runs is shown with its ratio to
ours (above 1: slower than ours), and its token ids are checked to equal ours.
Each call tokenizes the whole text afresh: nothing is kept between calls. The
times are CPU seconds of this process (all three tokenize on one thread), so what
else the machine runs disturbs them less than it would wall-clock times.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPM_VOCAB = ROOT / "tests" / "data" / "ggml-vocab-llama-spm.gguf"
SP_MODEL = ROOT / "tests" / "data" / "llama2-tokenizer.model"
SHAKESPEARE = Path("/work/shared/corpus/tinyshakespeare.txt")
sys.path.insert(0, str(ROOT))

from engine.tokenizer import Tokenizer  # noqa: E402
from tests.llama_cpp_vocabs import vocab_folder  # noqa: E402


def best_time(tokenize, text, repeats: int) -> tuple[float, list[int]]:
    """The fastest of ``repeats`` runs of ``tokenize(text)`` in CPU seconds, and its ids."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        ids = tokenize(text)
        best = min(best, time.process_time() - start)
    return best, list(ids)


def tokenizers(vocab: Path, sp_model: Path | None) -> dict:
    """name -> a function from text to ids without BOS, for each tokenizer compared on ``vocab``."""
    import llama_cpp

    ours = Tokenizer.from_gguf(vocab)
    llm = llama_cpp.Llama(model_path=str(vocab), vocab_only=True, verbose=False)
    compared = {"llamanp": ours.tokenize}
    if sp_model is not None:
        import sentencepiece
        compared["sentencepiece"] = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).encode
    compared["llama.cpp"] = lambda text: llm.tokenize(text.encode(), add_bos=False, special=False)
    return compared


def compare(title: str, compared: dict, text: str, repeats: int) -> bool:
    """Print one table; whether every tokenizer gave ours' ids."""
    n_bytes = len(text.encode())
    print(f"\n{title}")
    print(f"{'tokenizer':<14} {'CPU s':>8} {'MB/s':>7} {'vs ours':>8} {'tokens':>8}  ids")
    results = {name: best_time(tokenize, text, repeats) for name, tokenize in compared.items()}
    ours_time, ours_ids = results["llamanp"]
    for name, (seconds, ids) in results.items():
        print(f"{name:<14} {seconds:8.3f} {n_bytes / 1e6 / seconds:7.2f} {seconds / ours_time:7.2f}x "
              f"{len(ids):8d}  {'same' if ids == ours_ids else 'DIFFERENT'}")
    return all(ids == ours_ids for _, ids in results.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text_file", nargs="?", type=Path,
                        default=SHAKESPEARE if SHAKESPEARE.exists() else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / "tests" / ".cache",
                        help="where llama.cpp's vocabularies are fetched to (default: the tests' cache)")
    args = parser.parse_args(argv)
    if args.text_file is None:
        parser.error(f"{SHAKESPEARE} is not here: give a text file to tokenize")
    text = args.text_file.read_text(encoding="utf-8")
    print(f"{args.text_file.name}: {len(text.encode()) / 1e6:.2f} MB, best of {args.repeats}")
    bpe_vocab = vocab_folder(args.cache) / "ggml-vocab-llama-bpe.gguf"
    same = [compare("SentencePiece BPE (LLaMA 2, 32,000 tokens)", tokenizers(SPM_VOCAB, SP_MODEL), text, args.repeats),
            compare("byte-level BPE (Llama 3, llama-bpe, 128,256 tokens)", tokenizers(bpe_vocab, None), text,
                    args.repeats)]
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
