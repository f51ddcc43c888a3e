"""The ``llamanp`` command line: one subcommand per thing a user does with a model.

Errors the user can fix (a missing file, a corrupt model, a bad option) end in a
one-line message and exit status 1, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import LlamaError
from .gguf import read_gguf

DEFAULT_MODEL = Path(__file__).parent / "data" / "tiny-shakespeare.gguf"


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
    gguf = read_gguf(args.model)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamanp", description="A LLaMA inference engine in NumPy and Cython.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="show a model's metadata and tensor table")
    info.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="GGUF file (default: the embedded model)")
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (LlamaError, OSError) as e:
        sys.exit(f"llamanp: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
