"""Which of llama.cpp's x86 builds the exact backends mirror: its AVX2 kernels or its AVX-512 ones.

A llama.cpp built for the CPU it runs on (``-march=native``, what ``pip install
llama-cpp-python`` does) takes other code paths on a CPU with AVX-512: wider float
vectors that add in another order, another vector exp, other repacked kernels.  Both
orders are plain arithmetic, so the exact backends compute either on any x86 host;
``ggml_isa`` picks which:

    avx2     llama.cpp built for AVX2 with FMA and F16C
    avx512   llama.cpp built for AVX-512 with the F, BW, DQ, VL, VNNI and BF16 extensions
             (AMD Zen 4 and later, Intel Sapphire Rapids and later)
    auto     $LLAMANP_GGML_ISA when set (one of the two), else what a native build picks on
             this CPU: avx512 when it has AVX-512F, else avx2

A CPU with AVX-512F but not all of those extensions (Skylake-X, Ice Lake) runs yet other
variants of a few kernels (the BF16 dot products, the VNNI tiles); "auto" maps it to
avx512, the closest.  A native build on a CPU with AMX (Intel Sapphire Rapids and later)
also takes llama.cpp's AMX kernels for Q4_0, Q4_1, Q8_0 and Q4_K-Q6_K weights where the OS
lets it; llamanp does not mirror those (a build without AMX, GGML_NATIVE=OFF with the
AVX-512 options, computes what the avx512 mode does).
"""
from __future__ import annotations

import os

from .errors import ArgumentError

ISAS = ("avx2", "avx512")


def check_isa(isa: str) -> str:
    """``isa`` if it names one of ``ISAS``, else ArgumentError."""
    if isa not in ISAS:
        raise ArgumentError(f"unknown ggml_isa {isa!r}; choose from auto, {', '.join(ISAS)}")
    return isa


def resolve_isa(isa: str) -> str:
    """``isa``, or for "auto" $LLAMANP_GGML_ISA if set, else the one a native llama.cpp build uses on
    this CPU (``native_isa``): a whole process (a server, a test run) can follow one llama.cpp build."""
    if isa != "auto":
        return check_isa(isa)
    pinned = os.environ.get("LLAMANP_GGML_ISA")
    return check_isa(pinned) if pinned else native_isa()


def native_isa(cpuinfo: str = "/proc/cpuinfo") -> str:
    """avx512 when the CPU flags (Linux's /proc/cpuinfo) list avx512f, else avx2 (also where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512" if "avx512f" in line.split(":", 1)[-1].split() else "avx2"
    except OSError:
        pass
    return "avx2"
