"""Benchmarks: ours and llama.cpp's side by side from one run, as ratios.

    python scripts/bench.py model [options]      prefill/decode tok/s, load time, peak RSS
    python scripts/bench.py tokenizer [options]  tokenizing ~1 MB of text
    python scripts/bench.py grammar [options]    grammar masking cost per token
    python scripts/bench.py serve [options]      serving throughput and latency at 1-8 parallel streams
    python scripts/bench.py products FILE        each one-token matrix product of decode: ms and GB/s
"""
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUITES = {"model": "scripts.bench_model", "tokenizer": "scripts.bench_tokenizer", "grammar": "scripts.bench_grammar",
          "serve": "scripts.bench_serve", "products": "scripts.bench_products"}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in SUITES:
        sys.exit(__doc__)
    importlib.import_module(SUITES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
