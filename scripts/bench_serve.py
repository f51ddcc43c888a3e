"""Serving throughput under concurrent load: ``llamanp serve`` against llama-cpp-python's server.

    python scripts/bench.py serve [--model tiny smollm2-135m-instruct] [--streams 1 2 4 8] [--requests 200]

For each model (a GGUF path, a pulled model's name, or ``tiny`` for the bundled model), each
server runs in its own process on the same file, threads and context: ours with
``--parallel`` as many slots as the most streams, llama-cpp-python's (``python -m
llama_cpp.server``, the ``bench`` extra) as it ships, one request at a time. For each
number of streams, that many client threads send ``--requests`` completions in all, each
thread one after another (a prompt from a short list, ``--max-tokens`` new tokens, seeded
sampling so neither server stops early by chance more than the other). Reported per level:
aggregate decode tokens/s (completion tokens over wall time), p50 and p99 request latency,
failed requests, and the server process's CPU time per completion token (user and system,
from /proc on Linux): what a token costs in work, which other jobs on the machine change far
less than they change wall time; then ours over llama-cpp-python, and each server's
throughput over its own single stream. Wall-clock on whatever else the machine is doing:
compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import DEFAULT_MODEL  # noqa: E402
from engine.models import resolve  # noqa: E402

PROMPTS = ["ROMEO:", "JULIET: O Romeo,", "First Citizen:\nBefore we proceed", "KING HENRY: Once more",
           "Once upon a time", "The quick brown fox"]
ENGINES = ("ours", "llama-cpp-python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(engine: str, path: Path, port: int, threads: int, n_ctx: int, slots: int) -> subprocess.Popen:
    """A server process on ``port``, once it answers."""
    if engine == "ours":
        command = ["-m", "engine", "serve", "-m", str(path), "--port", str(port), "--threads", str(threads),
                   "--ctx", str(n_ctx), "--parallel", str(slots), "--queue", str(slots)]
    else:
        command = ["-m", "llama_cpp.server", "--model", str(path), "--port", str(port), "--n_threads", str(threads),
                   "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--verbose", "False"]
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit(f"{engine}'s server did not start: {process.stderr.read().decode()[-2000:]}")


def complete(port: int, i: int, max_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) of request ``i``; raises on any failure."""
    body = json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8,
                       "seed": i}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        out = json.loads(response.read())
    return time.perf_counter() - start, out["usage"]["completion_tokens"]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (its threads included), or NaN off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (stat's 14th, 15th)


def load(port: int, pid: int, streams: int, requests: int, max_tokens: int) -> dict:
    """``requests`` completions from ``streams`` client threads: throughput, latency, failures, and
    the CPU time of server process ``pid`` per completion token."""
    latencies, tokens, failures = [], [], []
    lock = threading.Lock()
    queue = iter(range(requests))

    def client():
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                seconds, n = complete(port, i, max_tokens)
                with lock:
                    latencies.append(seconds)
                    tokens.append(n)
            except (OSError, urllib.error.HTTPError, ValueError, KeyError) as e:
                with lock:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(streams)]
    cpu, start = cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    latencies.sort()
    return {"tok_s": sum(tokens) / wall, "cpu_ms": 1e3 * cpu / max(sum(tokens), 1),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
            "failed": len(failures), "first_failure": failures[0] if failures else None}


def bench_model(path: Path, args) -> dict[str, dict[int, dict]]:
    results = {}
    for engine in args.engines:
        port = free_port()
        process = start(engine, path, port, args.threads, args.ctx, max(args.streams))
        try:
            complete(port, 0, 4)  # warm up
            results[engine] = {}
            for n in args.streams:
                results[engine][n] = load(port, process.pid, n, args.requests, args.max_tokens)
                r = results[engine][n]
                print(f"  {engine:>16} {n} streams: {r['tok_s']:7.1f} tok/s  {r['cpu_ms']:.2f} CPU ms/tok"
                      f"  p50 {r['p50']:.2f}s  p99 {r['p99']:.2f}s"
                      f"  failed {r['failed']}/{args.requests}" + (f"  ({r['first_failure']})" if r["failed"] else ""),
                      flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return results


def report(name: str, results: dict[str, dict[int, dict]], streams: list[int]) -> None:
    print(f"\n{name}")
    print(f"{'streams':>8} " + " ".join(f"{e + ' tok/s':>24}" for e in results) + f" {'ours/theirs':>12}"
          + " ".join(f"{e + ' vs 1 stream':>26}" for e in results)
          + " ".join(f"{e + ' CPU ms/tok':>25}" for e in results))
    for n in streams:
        row = f"{n:>8} " + " ".join(f"{results[e][n]['tok_s']:>24.1f}" for e in results)
        row += f" {results['ours'][n]['tok_s'] / results['llama-cpp-python'][n]['tok_s']:>12.2f}" \
            if len(results) == 2 else f" {'':>12}"
        row += " ".join(f"{results[e][n]['tok_s'] / results[e][streams[0]]['tok_s']:>25.2f}x" for e in results)
        row += " ".join(f"{results[e][n]['cpu_ms']:>25.2f}" for e in results)
        print(row)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["tiny", "smollm2-135m-instruct"],
                   help="GGUF files, pulled models' names, or tiny (the bundled model)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--requests", type=int, default=200, help="requests per number of streams")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=2048, help="context per slot (ours) and of the one sequence (theirs)")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    args = p.parse_args(argv)
    for name in args.model:
        path = DEFAULT_MODEL if name == "tiny" else resolve(name)
        print(f"{name}: {args.requests} requests of {args.max_tokens} tokens per level, {args.threads} threads",
              flush=True)
        report(name, bench_model(path, args), args.streams)
