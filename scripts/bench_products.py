"""Decode's matrix products one by one: CPU time and read rate of each one-token product.

    python scripts/bench.py products FILE.gguf [--threads 1] [--passes 5] [--hot 20] [--wall]

Loads the file on the compiled backend and takes, in decode order, every product a decoded
token makes (each layer's stacked q+k+v, attn_output, stacked gate+up and ffn_down, then the
output matrix) with one activation row.  Two timings per product, each the best of several
in CPU seconds of the process (at one thread, what a quiet core gives on a shared machine;
``--wall`` for the wall clock, the measure at more threads on a quiet machine):

* stream: the products one after another, the whole model per pass, so each reads its
  weights from memory as a token does (the file is larger than what the caches keep of it);
* hot: the same product ``--hot`` times in a row, so its weights come from the caches
  where they fit (L2 for the small ones, else L3): the kernel's rate when memory waits less.

A product whose stream rate is near its hot rate waits on arithmetic, not on memory.
Printed per kind of product (summed over the layers): bytes, milliseconds per token, GB/s.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def decode_products(llm):
    """(kind, weight bytes, a function multiplying one activation row) for every product of a
    decoded token, in the order the model takes them."""
    model = llm.model
    ops, rng = model.backend, np.random.default_rng(0)

    def product(kind, weights):
        x = rng.standard_normal((1, weights[0].n_in)).astype(np.float32)
        n_bytes = sum(w.data.nbytes for w in weights)
        if len(weights) == 1:
            return kind, n_bytes, lambda: ops.matmul(weights[0], x)
        return kind, n_bytes, lambda: ops.matmuls(weights, x)

    out = []
    for layer in model.weights.layers:
        out += [product(f"q+k+v {'/'.join(w.type.name for w in layer.qkv)}", layer.qkv),
                product(f"attn_output {layer.wo.type.name}", (layer.wo,)),
                product(f"gate+up {'/'.join(w.type.name for w in layer.gate_up)}", layer.gate_up),
                product(f"ffn_down {layer.w_down.type.name}", (layer.w_down,))]
    out.append(product(f"output {model.weights.output.type.name}", (model.weights.output,)))
    return out


def best_time(run, repeat: int, clock) -> float:
    """The shortest of ``repeat`` calls of ``run`` on ``clock``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        run()
        best = min(best, clock() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a GGUF file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--passes", type=int, default=5, help="passes over the whole model (each product's best counts)")
    p.add_argument("--hot", type=int, default=20, help="repeats of each product in a row (the best counts)")
    p.add_argument("--wall", action="store_true",
                   help="wall-clock seconds rather than CPU seconds (which count every thread's, spinning included)")
    args = p.parse_args(argv)
    clock = time.perf_counter if args.wall else time.process_time
    from engine.llama import Llama
    llm = Llama(args.model, n_ctx=64, n_threads=args.threads, backend="cython")
    products = decode_products(llm)
    stream = [float("inf")] * len(products)
    for _ in range(args.passes):
        for i, (_, _, run) in enumerate(products):
            stream[i] = min(stream[i], best_time(run, 1, clock))
    hot = [best_time(run, args.hot, clock) for _, _, run in products]
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for (kind, n_bytes, _), s, h in zip(products, stream, hot):
        kinds[kind][0] += n_bytes
        kinds[kind][1] += s
        kinds[kind][2] += h
    seconds = "wall" if args.wall else "CPU"
    print(f"{Path(args.model).name}, {args.threads} thread(s), {seconds} seconds; stream: best of {args.passes} "
          f"passes over the model, hot: best of {args.hot} in a row")
    print(f"{'product':34}{'MiB':>8}{'stream ms':>11}{'GB/s':>7}{'hot ms':>9}{'GB/s':>7}")
    for kind, (n_bytes, s, h) in [*kinds.items(), ("all", [sum(v[i] for v in kinds.values()) for i in range(3)])]:
        print(f"{kind:34}{n_bytes / 2**20:8.1f}{1e3 * s:11.2f}{n_bytes / s / 1e9:7.1f}{1e3 * h:9.2f}"
              f"{n_bytes / h / 1e9:7.1f}")


if __name__ == "__main__":
    main()
