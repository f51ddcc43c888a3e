"""ggml itself as a test reference: ctypes bindings to the libggml that llama-cpp-python ships.

Only what the quantisation tests need: ggml's type table and row dequantisers, the CPU backend's
activation quantisers (the AVX2 code this machine runs) and its BF16 rounding and
one-row BF16 dot product, and the 4-row activation quantisers of the repacked matmul
path, de-interleaved back to plain block rows.
Importing this module fails (it does not skip) when llama_cpp is missing.
"""
import ctypes
import functools
from pathlib import Path

import llama_cpp
import numpy as np

from engine.quants import BLOCK_LAYOUT, QK, QK_K, GGMLType, row_bytes

LIB_DIR = Path(llama_cpp.__file__).resolve().parent / "lib"

_FLOATS = ctypes.POINTER(ctypes.c_float)


@functools.cache
def _lib(name: str) -> ctypes.CDLL:
    return ctypes.CDLL(str(LIB_DIR / f"lib{name}.so"))


@functools.cache
def _cpu() -> ctypes.CDLL:
    cpu = _lib("ggml-cpu")
    cpu.ggml_cpu_init()
    return cpu


def _function(lib: ctypes.CDLL, name: str):
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return fn


def _floats(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _c_name(type_: GGMLType) -> str:
    return type_.name.lower().replace("_k", "_K")


def type_layout(type_: int) -> tuple[str, int, int]:
    """ggml's name, block size and bytes per block of type id ``type_`` (ggml_type_name, _blck_size, _type_size)."""
    base = _lib("ggml-base")
    base.ggml_type_name.restype = ctypes.c_char_p
    base.ggml_blck_size.restype = ctypes.c_int64
    base.ggml_type_size.restype = ctypes.c_size_t
    for fn in (base.ggml_type_name, base.ggml_blck_size, base.ggml_type_size):
        fn.argtypes = [ctypes.c_int]
    return base.ggml_type_name(type_).decode(), base.ggml_blck_size(type_), base.ggml_type_size(type_)


def dequantize_row(raw: np.ndarray, type_: GGMLType) -> np.ndarray:
    """ggml's conversion of one row of raw bytes to f32 (libggml-base): dequantize_row_<type>,
    or ggml_fp16_to_fp32_row / ggml_bf16_to_fp32_row for the 16-bit float types."""
    block_size, type_size = BLOCK_LAYOUT[type_]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty(raw.size // type_size * block_size, dtype=np.float32)
    name = {GGMLType.F16: "ggml_fp16_to_fp32_row", GGMLType.BF16: "ggml_bf16_to_fp32_row"}.get(
        type_, f"dequantize_row_{_c_name(type_)}")
    fn = _function(_lib("ggml-base"), name)
    fn(raw.ctypes.data, out.ctypes.data, out.size)
    return out


def quantize_row(x: np.ndarray, type_: GGMLType) -> np.ndarray:
    """The CPU backend's quantize_row_q8_0 / q8_1 / q8_K (its from_float) on each row of x (..., n)."""
    x = _floats(x)
    out = np.zeros((*x.shape[:-1], row_bytes(type_, x.shape[-1])), dtype=np.uint8)
    fn = _function(_cpu(), f"quantize_row_{_c_name(type_)}")
    for row_in, row_out in zip(x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])):
        fn(row_in.ctypes.data, row_out.ctypes.data, row_in.size)
    return out


def fp32_to_bf16(x: np.ndarray) -> np.ndarray:
    """The CPU backend's BF16 from_float (ggml_cpu_fp32_to_bf16) on every value of x: uint16 bits."""
    x = _floats(x)
    out = np.zeros(x.shape, dtype=np.uint16)
    _function(_cpu(), "ggml_cpu_fp32_to_bf16")(x.ctypes.data, out.ctypes.data, x.size)
    return out


def vec_dot_bf16(w: np.ndarray, a: np.ndarray) -> np.float32:
    """ggml_vec_dot_bf16 (the CPU backend's one-row BF16 product) of two rows of bf16 bits (uint16)."""
    w, a = np.ascontiguousarray(w, dtype=np.uint16), np.ascontiguousarray(a, dtype=np.uint16)
    assert w.shape == a.shape and w.ndim == 1
    fn = _cpu().ggml_vec_dot_bf16
    fn.restype = None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    out = np.zeros(1, dtype=np.float32)
    fn(w.size, out.ctypes.data, 0, w.ctypes.data, 0, a.ctypes.data, 0, 1)
    return out[0]


def quantize_mat_4x8(x: np.ndarray, type_: GGMLType) -> np.ndarray:
    """ggml_quantize_mat_q8_0_4x8 / q8_K_4x8 on four rows (4, n), returned as four plain block rows.

    Those functions interleave the four rows' quants in runs of 8 bytes (and Q8_K's
    block sums in runs of 4); this undoes the interleaving so the result compares
    directly with ``quantize_row``.
    """
    x = _floats(x)
    assert x.shape[0] == 4
    nb = x.shape[1] // BLOCK_LAYOUT[type_][0]
    name = {GGMLType.Q8_0: "ggml_quantize_mat_q8_0_4x8", GGMLType.Q8_K: "ggml_quantize_mat_q8_K_4x8"}[type_]
    out = np.zeros(4 * row_bytes(type_, x.shape[1]), dtype=np.uint8)
    _function(_cpu(), name)(x.ctypes.data, out.ctypes.data, x.shape[1])
    if type_ == GGMLType.Q8_0:
        blocks = out.reshape(nb, 4 * (2 + QK))
        d = blocks[:, :8].reshape(nb, 4, 2)
        qs = blocks[:, 8:].reshape(nb, QK // 8, 4, 8).transpose(0, 2, 1, 3).reshape(nb, 4, QK)
        rows = np.concatenate([d, qs], axis=-1)  # (nb, 4, 34)
    else:
        blocks = out.reshape(nb, 4 * (4 + QK_K + QK_K // 8))
        d = blocks[:, :16].reshape(nb, 4, 4)
        qs = blocks[:, 16:16 + 4 * QK_K].reshape(nb, QK_K // 8, 4, 8).transpose(0, 2, 1, 3).reshape(nb, 4, QK_K)
        bsums = blocks[:, 16 + 4 * QK_K:].reshape(nb, 4, 4, 4, 2).transpose(0, 2, 1, 3, 4).reshape(nb, 4, 32)
        rows = np.concatenate([d, qs, bsums], axis=-1)  # (nb, 4, 292)
    return rows.transpose(1, 0, 2).reshape(4, -1)
