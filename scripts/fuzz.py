"""Fuzzing the loader at scale: tests/test_fuzz.py's mutations, by the hundred thousand, in subprocesses.

Worker processes, each under an address-space limit (RLIMIT_AS), take seeds one at a
time from this process, run ``tests.gguf_mutations.exercise`` on the seed's input
and report how it ended. A worker that dies (a signal: a crash) or takes longer than
the timeout (a hang) is replaced and the seed recorded. The report counts inputs,
loads, clean errors (the library's own exceptions), other exceptions, crashes, hangs
and the workers' peak resident memory, and names the seeds to replay.

    python scripts/fuzz.py -n 100000 --jobs 2         # the families tests/test_fuzz.py checks
    python scripts/fuzz.py --replay 1234              # one seed in this process, with its traceback

Exit status 0 when every input loaded or raised a library error, 1 otherwise.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import gguf_mutations as mutations  # noqa: E402

READY = "ready"


# ---- the worker: one process, many inputs ---------------------------------------------------------------

def outcome(path: Path) -> tuple[str, str]:
    """('ok', ''), ('error', the library exception's type) or ('other', 'Type: message') for one input."""
    from engine.errors import LlamaError

    try:
        mutations.exercise(path)
        return "ok", ""
    except LlamaError as e:
        return "error", type(e).__name__
    except Exception as e:  # what fuzzing looks for; MemoryError under the address-space limit among them
        return "other", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def worker(directory: Path) -> None:
    """Answer each seed read from stdin with a JSON line: seed, family, outcome, detail, peak RSS in KiB."""
    warnings.simplefilter("ignore")  # overflow in garbage weights; not what is counted here
    import engine.llama  # noqa: F401  (imported before READY, so the first seed's timeout is its own)

    base = mutations.Doc.read(mutations.write_base_model(directory / "base.gguf"))
    print(READY, flush=True)
    for line in sys.stdin:
        seed = int(line)
        try:
            family, blob = mutations.mutate(base, seed)
        except Exception as e:  # a bug in the generator, not in llamanp: the worker dies with this in its log
            raise SystemExit(f"the generator failed on seed {seed}: {type(e).__name__}: {e}") from e
        kind, detail = outcome(mutations.write_case(directory, blob))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps([seed, family, kind, detail, rss]), flush=True)


# ---- the parent: hands out seeds, watches the workers ---------------------------------------------------

@dataclass
class Tally:
    """What the inputs did, overall and by family."""
    inputs: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)      # ok, error, other, crash, hang
    errors: collections.Counter = field(default_factory=collections.Counter)       # library exception types
    by_family: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    findings: list = field(default_factory=list)  # (seed, family, kind, detail) of others, crashes and hangs
    peak_rss_kib: int = 0
    seconds: float = 0.0
    logs: str = ""  # the workers' stderr, kept when one crashed

    def add(self, seed: int, family: str, kind: str, detail: str = "") -> None:
        self.inputs += 1
        self.by_kind[kind] += 1
        self.by_family[family][kind] += 1
        if kind == "error":
            self.errors[detail] += 1
        elif kind != "ok":
            self.findings.append((seed, family, kind, detail))


class Worker:
    def __init__(self, args, index: int, run_dir: Path):
        self.directory = run_dir / f"worker{index}"
        self.directory.mkdir(exist_ok=True)
        self.log = open(run_dir / f"worker{index}.log", "ab")  # stderr: a crash's last words
        limit = args.memory << 20

        def limits() -> None:  # in the child, before it runs Python
            os.nice(args.nice)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(self.directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, preexec_fn=limits)
        self.seed: int | None = None
        self.deadline = time.monotonic() + args.start_timeout
        self.ready = False

    def send(self, seed: int, timeout: float) -> None:
        self.seed = seed
        self.deadline = time.monotonic() + timeout
        self.proc.stdin.write(f"{seed}\n")

    def stop(self) -> int:
        """Kill the process (if still running) and return its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()
        return self.proc.wait()


def death(status: int) -> str:
    return f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"


def run(args) -> Tally:
    tally = Tally()
    seeds = iter(range(args.start, args.start + args.n))
    selector = selectors.DefaultSelector()
    run_dir = Path(tempfile.mkdtemp(prefix="llamanp-fuzz-"))
    workers: list[Worker] = []
    started = time.monotonic()

    def start(index: int) -> None:
        w = Worker(args, index, run_dir)
        workers[index:index + 1] = [w]
        selector.register(w.proc.stdout, selectors.EVENT_READ, index)

    def next_seed(w: Worker) -> None:
        seed = next(seeds, None)
        if seed is None:
            w.seed = None
        else:
            w.send(seed, args.timeout)

    def replace(index: int, kind: str, detail: str) -> None:
        w = workers[index]
        selector.unregister(w.proc.stdout)
        status = w.stop()
        seed = w.seed
        if seed is None and not w.ready:
            raise SystemExit(f"worker {index} did not start ({detail or death(status)}); see {w.log.name}")
        if seed is not None:
            tally.add(seed, mutations.family(seed, mutations.FAMILIES), kind, detail or death(status))
        start(index)

    workers.extend([None] * args.jobs)
    for index in range(args.jobs):
        start(index)
    last_note = started
    while any(w.seed is not None or not w.ready for w in workers):
        now = time.monotonic()
        wait = max(0.0, min(w.deadline for w in workers if w.seed is not None or not w.ready) - now)
        for key, _ in selector.select(timeout=wait):
            index = key.data
            w = workers[index]
            line = w.proc.stdout.readline()
            if not line:  # the worker died mid-input
                replace(index, "crash", "")
                continue
            if line.strip() == READY:
                w.ready = True
            else:
                seed, family, kind, detail, rss = json.loads(line)
                tally.add(seed, family, kind, detail)
                tally.peak_rss_kib = max(tally.peak_rss_kib, rss)
            next_seed(w)
            if w.seed is None:  # no seeds left: this worker is done
                selector.unregister(w.proc.stdout)
                w.proc.stdin.close()
                w.stop()
                w.ready = True
        now = time.monotonic()
        for index, w in enumerate(workers):
            if (w.seed is not None or not w.ready) and now > w.deadline:
                replace(index, "hang", f"no answer in {args.timeout if w.ready else args.start_timeout:g} s")
        if now - last_note > 60:
            last_note = now
            print(f"[{tally.inputs}/{args.n} inputs, {now - started:.0f} s] {dict(tally.by_kind)}",
                  file=sys.stderr, flush=True)
    tally.peak_rss_kib = max(tally.peak_rss_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    tally.seconds = time.monotonic() - started
    if tally.by_kind["crash"]:
        tally.logs = str(run_dir)
    else:
        shutil.rmtree(run_dir)
    return tally


def report(tally: Tally, args) -> str:
    kinds = tally.by_kind
    lines = [
        f"inputs:            {tally.inputs} (seeds {args.start}..{args.start + args.n - 1}, "
        f"{len(tally.by_family)} families, {tally.seconds:.0f} s, {tally.inputs / tally.seconds:.0f} inputs/s)",
        f"loaded and ran:    {kinds['ok']}",
        f"clean errors:      {kinds['error']}  " + ", ".join(f"{k} {v}" for k, v in tally.errors.most_common()),
        f"other exceptions:  {kinds['other']}",
        f"crashes:           {kinds['crash']}  (a worker killed by a signal, or exiting)",
        f"hangs (> {args.timeout:g} s):    {kinds['hang']}",
        f"peak RSS:          {tally.peak_rss_kib / 1024:.0f} MiB "
        f"(a worker; address space limited to {args.memory} MiB)",
        "",
        "by family: " + ", ".join(f"{name} {dict(c)}" for name, c in sorted(tally.by_family.items())),
    ]
    if tally.findings:
        lines += ["", "to replay: python scripts/fuzz.py --replay SEED"]
        lines += [f"  seed {seed} ({family}) {kind}: {detail}" for seed, family, kind, detail in tally.findings[:50]]
    if tally.logs:
        lines += [f"the workers' stderr: {tally.logs}/worker*.log"]
    return "\n".join(lines)


def replay(seed: int) -> None:
    """Run one seed here, letting whatever it raises propagate with its traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        base = mutations.Doc.read(mutations.write_base_model(Path(tmp) / "base.gguf"))
        family, blob = mutations.mutate(base, seed)
        print(f"seed {seed}: family {family}, {len(blob)} bytes", file=sys.stderr)
        mutations.exercise(mutations.write_case(Path(tmp), blob))
        print("loaded and ran", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=100_000, help="how many inputs (default 100000)")
    p.add_argument("--start", type=int, default=0, help="the first seed")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)), help="worker processes")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds one input may take (a hang after)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds a worker may take to start")
    p.add_argument("--memory", type=int, default=4096, help="each worker's address-space limit in MiB")
    p.add_argument("--nice", type=int, default=10, help="the workers' niceness")
    p.add_argument("--json", help="also write the tally here as JSON")
    p.add_argument("--replay", type=int, metavar="SEED", help="run one seed in this process and show its traceback")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker))
    if args.replay is not None:
        return replay(args.replay)
    tally = run(args)
    print(report(tally, args))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "inputs": tally.inputs, "seconds": round(tally.seconds, 1), **tally.by_kind, "errors": tally.errors,
            "peak_rss_kib": tally.peak_rss_kib, "by_family": tally.by_family, "findings": tally.findings}, indent=1))
    sys.exit(0 if tally.inputs == args.n and kinds_clean(tally) else 1)


def kinds_clean(tally: Tally) -> bool:
    return not (tally.by_kind["other"] or tally.by_kind["crash"] or tally.by_kind["hang"])


if __name__ == "__main__":
    main()
