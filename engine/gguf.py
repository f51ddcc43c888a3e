"""GGUF, the file format of llama.cpp models, read as plain data.

A GGUF file is, in order (all little-endian):

    header      magic "GGUF", uint32 version (2 or 3), uint64 tensor count, uint64 metadata count
    metadata    key (string), uint32 value type, value   -- repeated
    tensor info name (string), uint32 n_dims, uint64 dims[n_dims] (ne0 first),
                uint32 ggml type, uint64 offset into the data section   -- repeated
    padding     up to ``general.alignment`` (default 32)
    data        the tensors' bytes, each at its offset, each offset aligned

A string is a uint64 byte length followed by UTF-8 bytes; an array is a uint32
element type, a uint64 count, then the elements. Tensor data is exposed as
zero-copy NumPy views over a read-only mmap of the file.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from .errors import GGUFError
from .quants import BLOCK_LAYOUT, GGMLType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# How deep arrays may nest in metadata: llama.cpp reads no nested arrays at all, gguf-py writes
# them to any depth; a few levels cover every real file and keep a crafted one from exhausting the stack.
MAX_ARRAY_DEPTH = 8


class ValueType(IntEnum):
    """The type tags of GGUF metadata values."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


SCALAR_DTYPES: dict[ValueType, np.dtype] = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}

# NumPy element types for tensor data; every other type is exposed as raw bytes per row.
TENSOR_DTYPES: dict[GGMLType, np.dtype] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how it is laid out."""
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] (ne0) is the row length
    type: GGMLType
    offset: int            # from the start of the data section

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy order: rows outermost, the row length last."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        block_size, type_size = BLOCK_LAYOUT[self.type]
        return self.n_elements // block_size * type_size


@dataclass
class GGUFFile:
    """A parsed GGUF file: its metadata, tensor table and mmap'd tensor data."""
    path: str
    version: int
    metadata: dict[str, Any]
    value_types: dict[str, ValueType]  # each metadata key's type tag (ARRAY for arrays)
    tensors: dict[str, TensorInfo]
    alignment: int
    data_offset: int
    _buffer: mmap.mmap | None = field(default=None, repr=False)

    def tensor(self, name: str) -> np.ndarray:
        """A read-only, zero-copy view of a tensor's data.

        F32 and F16 tensors come typed in NumPy shape order; every other type comes
        as uint8 with shape ``(*rows, bytes_per_row)``, ready for ``quants``.
        """
        if self._buffer is None:
            raise GGUFError(f"{self.path}: file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        start = self.data_offset + info.offset
        dtype = TENSOR_DTYPES.get(info.type)
        if dtype is not None:
            return np.frombuffer(self._buffer, dtype=dtype, count=info.n_elements, offset=start).reshape(info.shape)
        row = info.n_bytes // (info.n_elements // info.dims[0])
        raw = np.frombuffer(self._buffer, dtype=np.uint8, count=info.n_bytes, offset=start)
        return raw.reshape(*info.shape[:-1], row)

    def close(self) -> None:
        """Release the mmap; views handed out earlier keep it alive until they are dropped."""
        self._buffer = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Cursor:
    """Reads little-endian values from a buffer, failing cleanly past its end."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes and return where they start."""
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"file is truncated while reading {what} at byte {self.pos}")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} at byte {start} is not valid UTF-8 ({e.reason})") from None

    def count(self, what: str, min_item_bytes: int) -> int:
        """A uint64 count, checked against the bytes left so a bad count cannot allocate gigabytes."""
        n = self.u64(f"the count of {what}")
        if n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what}: count {n} needs more bytes than the file has left")
        return n

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        """A metadata value of type tag ``vtype``; ``depth`` counts the arrays it sits in."""
        try:
            vtype = ValueType(vtype)
        except ValueError:
            raise self.fail(f"{what} has unknown metadata value type {vtype}") from None
        if vtype == ValueType.STRING:
            return self.string(what)
        if vtype == ValueType.ARRAY:
            return self.array(what, depth + 1)
        dtype = SCALAR_DTYPES[vtype]
        start = self.take(dtype.itemsize, what)
        value = np.frombuffer(self.buf, dtype=dtype, count=1, offset=start)[0].item()
        return bool(value) if vtype == ValueType.BOOL else value

    def array(self, what: str, depth: int) -> Any:
        """Numeric arrays become 1-D NumPy arrays; string and nested arrays become lists."""
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"{what} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        etype_raw = self.u32(f"the element type of {what}")
        try:
            etype = ValueType(etype_raw)
        except ValueError:
            raise self.fail(f"{what} has unknown array element type {etype_raw}") from None
        if etype in SCALAR_DTYPES:
            dtype = SCALAR_DTYPES[etype]
            n = self.count(what, dtype.itemsize)
            start = self.take(n * dtype.itemsize, what)
            values = np.frombuffer(self.buf, dtype=dtype, count=n, offset=start).copy()
            return values.astype(bool) if etype == ValueType.BOOL else values
        min_bytes = 8 if etype == ValueType.STRING else 12  # a length, or a type and a count
        n = self.count(what, min_bytes)
        if etype == ValueType.STRING:
            return self.strings(n, what)
        return [self.value(etype, f"{what}[{i}]", depth) for i in range(n)]

    def strings(self, n: int, what: str) -> list[str]:
        """``n`` strings in a row, as ``string`` reads them but in one tight loop: vocabularies
        hold 100,000s. At the first one that is cut off or not UTF-8, ``string`` takes over
        and names the fault."""
        buf, pos, size, out = self.buf, self.pos, self.size, []
        try:
            for _ in range(n):
                (length,) = struct.unpack_from("<Q", buf, pos)
                end = pos + 8 + length
                if end > size:
                    break
                out.append(str(buf[pos + 8:end], "utf-8"))
                pos = end
        except (struct.error, UnicodeDecodeError):
            pass
        self.pos = pos
        return out + [self.string(f"{what}[{i}]") for i in range(len(out), n)]


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor table, and mmap its data."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise GGUFError(f"{path}: file is empty")
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open ({e.strerror or e})") from e
    cur = _Cursor(memoryview(buffer), path)

    start = cur.take(4, "the magic")
    magic = bytes(buffer[start:start + 4])
    if magic != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
    version = cur.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        hint = " (a big-endian file?)" if swapped in SUPPORTED_VERSIONS else ""
        raise GGUFError(f"{path}: unsupported GGUF version {version}{hint}; supported: {SUPPORTED_VERSIONS}")
    n_tensors = cur.count("tensor infos", 4 + 8 + 4 + 4 + 8)
    n_kv = cur.count("metadata entries", 8 + 4 + 1)

    metadata: dict[str, Any] = {}
    value_types: dict[str, ValueType] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:
            raise GGUFError(f"{path}: metadata key {key!r} appears twice")
        vtype = cur.u32(f"the type of metadata {key!r}")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")
        value_types[key] = ValueType(vtype)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path}: general.alignment must be a positive power of two, got {alignment!r}")

    infos = [_tensor_info(cur, i) for i in range(n_tensors)]
    data_offset = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for info in infos:
        if info.name in tensors:
            raise GGUFError(f"{path}: tensor {info.name!r} appears twice")
        if info.offset % alignment:
            raise GGUFError(f"{path}: tensor {info.name!r} offset {info.offset} is not aligned to {alignment}")
        end = data_offset + info.offset + info.n_bytes
        if end > size:
            raise GGUFError(f"{path}: tensor {info.name!r} runs past the end of the file ({end} > {size} bytes)")
        tensors[info.name] = info
    return GGUFFile(path, version, metadata, value_types, tensors, alignment, data_offset, buffer)


def _tensor_info(cur: _Cursor, i: int) -> TensorInfo:
    name = cur.string(f"the name of tensor #{i}")
    n_dims = cur.u32(f"the rank of tensor {name!r}")
    if not 1 <= n_dims <= 4:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions; ggml allows 1 to 4")
    dims = tuple(cur.u64(f"the shape of tensor {name!r}") for _ in range(n_dims))
    if any(d == 0 for d in dims) or np.prod(dims, dtype=np.float64) > 2.0 ** 62:
        raise cur.fail(f"tensor {name!r} has an invalid shape {dims}")
    type_raw = cur.u32(f"the type of tensor {name!r}")
    try:
        type_ = GGMLType(type_raw)
    except ValueError:
        raise cur.fail(f"tensor {name!r} has unknown or unsupported ggml type {type_raw}") from None
    block_size = BLOCK_LAYOUT[type_][0]
    if dims[0] % block_size:
        raise cur.fail(f"tensor {name!r}: row length {dims[0]} is not a multiple of the {type_.name} "
                       f"block size {block_size}")
    offset = cur.u64(f"the offset of tensor {name!r}")
    return TensorInfo(name, dims, type_, offset)
