"""Model speed, ours against llama.cpp on the same file and thread count.

    python scripts/bench.py model [--quant Q4_0 Q4_K_M BF16] [--threads 2] [--cache DIR]
    python scripts/bench.py model --model smollm2-135m-instruct other.gguf   # GGUF files or pulled models
    python scripts/bench.py model --quant Q4_0 --roofline     # each engine's share of the read bandwidth
    python scripts/bench.py model --quant Q4_0 --shape 7b     # llama-2-7b's shape (built once, ~3.6 GiB)

Builds (once, into the cache dir) a TinyLlama-1.1B-shaped synthetic model (dim 2048,
22 layers, 32 heads, 4 kv heads, ffn 5632) quantised by llama.cpp (any of
make_model's QUANT_TYPES, BF16 included; Q2_K_pure .. Q5_K_pure put every matrix in that one K type, where
Q2_K .. Q5_K_M are llama-quantize's mixtures), then runs each
engine in its own process so peak RSS is its own: load time, prefill tok/s for a
64- and a 512-token prompt (fresh cache, best of ``--repeat``), decode tok/s (one
token at a time after a 16-token prompt), peak RSS; and prints the ratios ours/llama.cpp.
A last table times decoding on a one-layer dim-64 model, where the weights are tiny, so
the milliseconds per token are what each engine spends around its kernels (Python,
sampling-free bookkeeping, thread hand-offs); ``--quant`` with no types runs only that.
Each engine runs ``--rounds`` times, alternating with the other, and every number is
the median of its rounds. Timings are wall-clock on whatever else the machine is doing,
so compare within a run.  ``--model`` times those files instead (paths or names of
pulled models), with prompts of random ids from each one's own vocabulary.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.models import resolve  # noqa: E402
from scripts.large_model import LLAMA2_7B, cached_large_model  # noqa: E402
from scripts.roofline import bytes_per_token, read_bandwidth  # noqa: E402
from tests.model_files import QUANT_TYPES, ModelSpec, cached_model  # noqa: E402

TINYLLAMA = ModelSpec(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn=5632, n_ctx=2048, ftype="f16")
# one narrow layer: decoding it costs little beyond what each engine spends per token around the kernels
ONE_LAYER = ModelSpec(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, ffn=128, n_ctx=2048)
ONE_LAYER_DECODE = 256  # tokens decoded on it
ENGINES = ("ours", "llama.cpp")


def prompt(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    """Token 1 (the llama2 BOS) then ``n - 1`` reproducible ids past the first 300 (control and byte tokens)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(300, n_vocab, n - 1).tolist()


class Ours:
    def __init__(self, path: Path, n_threads: int, n_ctx: int):
        from engine.llama import Llama
        self.llm = Llama(path, n_ctx=n_ctx, n_threads=n_threads, backend="cython")
        self.n_vocab = self.llm.n_vocab

    def prefill(self, tokens: list[int]) -> None:
        self.llm.update(tokens, n_past=0)

    def step(self, token: int) -> None:
        self.llm.update([token])


class LlamaCpp:
    def __init__(self, path: Path, n_threads: int, n_ctx: int):
        import llama_cpp
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                   n_batch=512, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def prefill(self, tokens: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(tokens)

    def step(self, token: int) -> None:
        self.llm.eval([token])


def measure(engine: str, path: Path, n_threads: int, prefills: list[int], n_decode: int, repeat: int,
            clock=time.perf_counter) -> dict:
    """One engine's numbers, measured in this process; prefill and decode on ``clock`` (load on the wall clock)."""
    n_ctx = max(prefills + [16]) + n_decode + 8
    t0 = time.perf_counter()
    runner = (Ours if engine == "ours" else LlamaCpp)(path, n_threads, n_ctx)
    result = {"load_s": time.perf_counter() - t0}
    n_vocab = runner.n_vocab
    runner.prefill(prompt(8, n_vocab))  # warm-up: first-touch of weights and scratch
    for n in prefills:
        tokens, best = prompt(n, n_vocab), float("inf")
        for _ in range(repeat):
            t0 = clock()
            runner.prefill(tokens)
            best = min(best, clock() - t0)
        result[f"prefill_{n}_tok_s"] = n / best
    runner.prefill(prompt(16, n_vocab))
    following = prompt(n_decode + 1, n_vocab, seed=1)[1:]
    t0 = clock()
    for token in following:
        runner.step(token)
    result["decode_tok_s"] = n_decode / (clock() - t0)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def peak_rss_mib() -> float:
    """This process's peak resident set.

    Linux's VmHWM belongs to the process image, whereas ru_maxrss can carry over the
    peak of the parent that forked it; elsewhere ru_maxrss is all there is.
    """
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_engines(path: Path, args, prefill: list[int], decode: int) -> dict[str, dict]:
    """Each engine's numbers: the median over ``args.rounds`` rounds that alternate the
    engines, so a drift in the machine's speed (a VM's memory bandwidth moves with its
    neighbours) falls on both.  With ``args.roofline`` each round also probes the read
    bandwidth, as the entry "read" ({"gb_s": ...})."""
    rounds = []
    for i in range(args.rounds):
        results = {engine: run_worker(engine, path, args, prefill, decode, f"round {i + 1}/{args.rounds}")
                   for engine in args.engines}
        if args.roofline:
            results["read"] = {"gb_s": read_bandwidth(args.threads)}
        rounds.append(results)
    return {name: {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]}
            for name in rounds[0]}


def run_worker(engine: str, path: Path, args, prefill: list[int], decode: int, progress: str) -> dict:
    """Measure ``engine`` in a fresh interpreter and read back its JSON line."""
    print(f"bench: {path.name}, {engine}, {progress}", file=sys.stderr, flush=True)
    cmd = [sys.executable, __file__, "--worker", engine, "--model", str(path), "--threads", str(args.threads),
           "--prefill", *map(str, prefill), "--decode", str(decode), "--repeat", str(args.repeat)]
    if args.cpu_time:
        cmd.append("--cpu-time")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def roofline(path: Path, results: dict[str, dict], n_threads: int) -> str:
    """The decode speed the measured read bandwidth allows for this file, and each engine's share of it."""
    per_token = bytes_per_token(path)
    gb_s = results["read"]["gb_s"]
    bound = gb_s * 1e9 / per_token
    shares = ", ".join(f"{engine} {numbers['decode_tok_s'] / bound:.0%}"
                       for engine, numbers in results.items() if "decode_tok_s" in numbers)
    return (f"roofline: a plain {n_threads}-thread read streams {gb_s:.1f} GB/s; a token reads "
            f"{per_token / 2**20:.0f} MiB of weights, so decode is bounded by {bound:.1f} tok/s; "
            f"decode reaches {shares} of it")


def table(title: str, results: dict[str, dict]) -> str:
    ours, ref = results["ours"], results["llama.cpp"]
    lines = [title, f"{'':22}{'ours':>10}{'llama.cpp':>12}{'ratio':>8}"]
    for key in ours:
        note = " (lower is better)" if key in ("load_s", "peak_rss_mib", "decode_ms_per_tok") else ""
        lines.append(f"{key:22}{ours[key]:10.2f}{ref[key]:12.2f}{ours[key] / ref[key]:7.2f}x{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quant", nargs="*", default=["Q4_0", "Q4_K_M"], choices=QUANT_TYPES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill", type=int, nargs="*", default=[64, 512])
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2, help="prefills per round (the best counts)")
    p.add_argument("--rounds", type=int, default=3, help="rounds alternating the engines (the median counts)")
    p.add_argument("--cache", default=str(ROOT / "tests" / ".cache" / "bench"))
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--one-layer", action=argparse.BooleanOptionalAction, default=True,
                   help="also time decoding on a 1-layer dim-64 model (per-token overhead)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time prefill and decode in the process's CPU seconds rather than the wall clock's: at "
                        "one thread, what a quiet machine gives when other jobs share its cores (at more, "
                        "it also counts the workers' spinning)")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--model", nargs="+",
                   help="time these GGUF files or pulled model names instead of the synthetic ones")
    p.add_argument("--shape", choices=("tinyllama", "7b"), default="tinyllama",
                   help="the synthetic model's shape: TinyLlama-1.1B, or llama-2-7b (opt in: built once, "
                        "a tensor at a time, 13 GiB of f16 on disk while llama.cpp quantises it)")
    p.add_argument("--roofline", action="store_true",
                   help="probe the read bandwidth in every round and give each engine's share of the "
                        "decode speed it allows")
    args = p.parse_args(argv)
    if args.worker:
        times = measure(args.worker, Path(args.model[0]), args.threads, args.prefill, args.decode, args.repeat,
                        time.process_time if args.cpu_time else time.perf_counter)
        print(json.dumps(times))
        return
    print(f"threads {args.threads}; median of {args.rounds} rounds alternating the engines; "
          f"prefill best of {args.repeat} per round; decode {args.decode} tokens"
          + ("; CPU seconds" if args.cpu_time else ""), flush=True)
    if args.model:
        paths = [Path(resolve(model)) for model in args.model]
    elif args.shape == "7b":
        paths = [cached_large_model(args.cache, LLAMA2_7B, quant) for quant in args.quant]
    else:
        paths = [cached_model(args.cache, TINYLLAMA, quant) for quant in args.quant]
    for path in paths:
        results = measure_engines(path, args, args.prefill, args.decode)
        report(f"{path.name} ({path.stat().st_size / 2**20:.0f} MiB)", results)
        if args.roofline:
            print(roofline(path, results, args.threads), flush=True)
    if args.one_layer and not args.model:
        path = cached_model(args.cache, ONE_LAYER, "Q8_0")
        results = measure_engines(path, args, [], ONE_LAYER_DECODE)
        for numbers in (results[engine] for engine in args.engines):
            numbers["decode_ms_per_tok"] = 1000 / numbers["decode_tok_s"]
        report("1-layer dim-64 Q8_0 model: the cost of a token outside the weight streaming", results)


def report(title: str, results: dict[str, dict]) -> None:
    engines = {name: numbers for name, numbers in results.items() if name in ENGINES}
    if len(engines) == 2:
        print(table(title, engines), flush=True)
    else:
        print(title, json.dumps(engines), flush=True)


if __name__ == "__main__":
    main()
