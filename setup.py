"""Build the Cython kernels.

Every ``kernels/*.pyx`` becomes an extension module compiled with ``-O3`` (and
``-ffp-contract=off``, so floating point rounds exactly where the source says),
OpenMP when the compiler accepts ``-fopenmp`` (a single-threaded build
otherwise), and ``-march=native`` unless ``LLAMANP_NATIVE=0`` is set, in the
spirit of llama.cpp's ``GGML_NATIVE`` switch.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def compiler_accepts(flag: str) -> bool:
    """Whether the C compiler builds and links a trivial OpenMP-free program with ``flag``."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.c")
        src.write_text("int main(void) { return 0; }\n")
        result = subprocess.run(
            [cc, flag, str(src), "-o", str(Path(tmp, "probe"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0


def build_flags() -> tuple[list[str], list[str]]:
    compile_args = ["-O3", "-ffp-contract=off"]  # an FMA only where the source writes one, as ggml's kernels do
    link_args = []
    if os.environ.get("LLAMANP_NATIVE", "1") != "0" and compiler_accepts("-march=native"):
        compile_args.append("-march=native")
    if os.environ.get("LLAMANP_OPENMP", "1") != "0" and compiler_accepts("-fopenmp"):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        print("llamanp: building without OpenMP (kernels run single-threaded)", file=sys.stderr)
    return compile_args, link_args


compile_args, link_args = build_flags()
extensions = [
    Extension(
        f"kernels.{pyx.stem}",
        [str(pyx)],
        include_dirs=[np.get_include(), "kernels"],
        depends=[str(h) for h in sorted(Path("kernels").glob("*.h"))],  # headers include headers: rebuild on any
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted(Path("kernels").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
