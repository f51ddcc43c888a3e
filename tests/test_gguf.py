"""engine.gguf against the gguf package's reader, and its errors on malformed files."""
import struct

import gguf
import numpy as np
import pytest

from engine.errors import GGUFError
from engine.gguf import MAX_ARRAY_DEPTH, ValueType, read_gguf
from engine.quants import GGMLType

QUANTS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]


def flatten(value):
    """Nested arrays flattened, as the gguf package's ``contents()`` reports them."""
    if isinstance(value, list) and value and isinstance(value[0], (list, np.ndarray)):
        return [x for item in value for x in flatten(list(item))]
    return value


def assert_same_metadata(ours, theirs: gguf.GGUFReader):
    assert list(ours.metadata) == [k for k in theirs.fields if not k.startswith("GGUF.")]
    for key, value in ours.metadata.items():
        field = theirs.fields[key]
        assert ours.value_types[key] == ValueType(int(field.types[0])), key
        expected = field.contents()
        if isinstance(value, np.ndarray):
            assert value.dtype == np.dtype(gguf.GGUFReader.gguf_scalar_to_np[gguf.GGUFValueType(field.types[1])]) \
                or value.dtype == bool, key
            np.testing.assert_array_equal(value, np.asarray(expected, dtype=value.dtype), err_msg=key)
        else:
            assert flatten(value) == expected, key


def assert_same_tensors(ours, theirs: gguf.GGUFReader):
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.type == GGMLType(int(t.tensor_type))
        assert info.dims == tuple(int(d) for d in t.shape)
        assert info.n_bytes == int(t.n_bytes)
        assert ours.data_offset + info.offset == int(t.data_offset)
        data = ours.tensor(t.name)
        assert data.tobytes() == np.asarray(t.data).tobytes()
        assert not data.flags.writeable and not data.flags.owndata  # a view over the mmap


def test_vocab_file_matches_gguf_package(vocab_path):
    ours = read_gguf(vocab_path)
    theirs = gguf.GGUFReader(vocab_path)
    assert ours.version == 3
    assert_same_metadata(ours, theirs)
    assert_same_tensors(ours, theirs)


@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_float_model_matches_gguf_package(make_model, ftype):
    path = make_model(ftype=ftype)
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    assert_same_metadata(ours, theirs)
    assert_same_tensors(ours, theirs)
    assert ours.tensor("blk.0.attn_q.weight").dtype == (np.float32 if ftype == "f32" else np.float16)


@pytest.mark.parametrize("quant", QUANTS)
def test_quantised_model_matches_gguf_package(make_model, quant):
    path = make_model(quant=quant)
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    assert_same_metadata(ours, theirs)
    assert_same_tensors(ours, theirs)


def test_every_metadata_type_round_trips(tmp_path):
    """Each scalar type, strings, and nested arrays as written by gguf's writer."""
    path = tmp_path / "kv.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    values = {
        "t.u8": (7, gguf.GGUFValueType.UINT8), "t.i8": (-7, gguf.GGUFValueType.INT8),
        "t.u16": (65535, gguf.GGUFValueType.UINT16), "t.i16": (-32768, gguf.GGUFValueType.INT16),
        "t.u32": (2**32 - 1, gguf.GGUFValueType.UINT32), "t.i32": (-2**31, gguf.GGUFValueType.INT32),
        "t.u64": (2**64 - 1, gguf.GGUFValueType.UINT64), "t.i64": (-2**63, gguf.GGUFValueType.INT64),
        "t.f32": (1.5, gguf.GGUFValueType.FLOAT32), "t.f64": (-2.25, gguf.GGUFValueType.FLOAT64),
        "t.bool": (True, gguf.GGUFValueType.BOOL), "t.str": ("héllo ▁ 😊", gguf.GGUFValueType.STRING),
    }
    for key, (value, vtype) in values.items():
        w.add_key_value(key, value, vtype)
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["a", "", "ü"])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    w.add_array("t.arr_empty", [])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    assert_same_metadata(ours, theirs)
    assert ours.metadata["t.arr_nested"][0].tolist() == [1, 2]
    assert ours.metadata["t.arr_str"] == ["a", "", "ü"]


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(3, dtype=np.float32))
    w.add_tensor("b", np.arange(32, dtype=np.float16).reshape(2, 16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = read_gguf(path)
    assert ours.alignment == 64 and ours.data_offset % 64 == 0
    assert_same_tensors(ours, gguf.GGUFReader(path))


# --- malformed files, built byte by byte -------------------------------------------------------

def gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def build(*, magic=b"GGUF", version=3, kvs=(), tensors=(), data=b"", n_tensors=None, n_kv=None) -> bytes:
    """A GGUF file from raw parts: kvs are pre-encoded (key, type, payload); tensors (name, dims, type, offset)."""
    out = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                              len(kvs) if n_kv is None else n_kv)
    for key, vtype, payload in kvs:
        out += gguf_string(key) + struct.pack("<I", vtype) + payload
    for name, dims, ttype, offset in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % 32)
    return out + data


def valid_file() -> bytes:
    kv = (b"general.architecture", 8, gguf_string(b"llama"))
    return build(kvs=[kv], tensors=[(b"w", (4, 2), 0, 0)], data=np.ones(8, np.float32).tobytes())


def read_bytes(tmp_path, blob: bytes):
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    return read_gguf(path)


def test_hand_built_file_is_valid(tmp_path):
    f = read_bytes(tmp_path, valid_file())
    assert f.metadata == {"general.architecture": "llama"}
    np.testing.assert_array_equal(f.tensor("w"), np.ones((2, 4), np.float32))
    theirs = gguf.GGUFReader(tmp_path / "bad.gguf")
    assert_same_tensors(f, theirs)


@pytest.mark.parametrize("cut", [0, 3, 10, 30, 50, 80, 100])
def test_truncated_file(tmp_path, cut):
    blob = valid_file()
    with pytest.raises(GGUFError, match="bad.gguf"):
        read_bytes(tmp_path, blob[:cut] if cut else b"")


def test_truncated_tensor_data(tmp_path):
    with pytest.raises(GGUFError, match="runs past the end"):
        read_bytes(tmp_path, valid_file()[:-1])


def test_wrong_magic(tmp_path):
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_bytes(tmp_path, b"GGML" + valid_file()[4:])


@pytest.mark.parametrize("version", [1, 4, 2**24 * 3])
def test_unsupported_version(tmp_path, version):
    with pytest.raises(GGUFError, match="unsupported GGUF version"):
        read_bytes(tmp_path, build(version=version))


def test_tensor_offset_past_end(tmp_path):
    blob = build(tensors=[(b"w", (4, 2), 0, 1 << 40)], data=b"\0" * 32)
    with pytest.raises(GGUFError, match="'w' runs past the end"):
        read_bytes(tmp_path, blob)


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
def test_huge_counts(tmp_path, field):
    with pytest.raises(GGUFError, match="count"):
        read_bytes(tmp_path, build(**{field: 2**62}))


def test_huge_string_length(tmp_path):
    kv = (b"general.name", 8, struct.pack("<Q", 2**60) + b"abc")
    with pytest.raises(GGUFError, match="truncated"):
        read_bytes(tmp_path, build(kvs=[kv]))


def test_huge_array_count(tmp_path):
    kv = (b"tokens", 9, struct.pack("<IQ", 8, 2**61))
    with pytest.raises(GGUFError, match="count 2305843009213693952"):
        read_bytes(tmp_path, build(kvs=[kv]))


@pytest.mark.parametrize("tail, message", [
    (gguf_string(b"\xff") + gguf_string(b"c"), r"tokens'\[1\] at byte \d+ is not valid UTF-8"),
    (gguf_string(b"c") + struct.pack("<Q", 99) + b"xyz", r"truncated while reading metadata 'tokens'\[2\]"),
    (gguf_string(b"cdefgh") + b"\1\0", r"truncated while reading the length of metadata 'tokens'\[2\]"),
])
def test_bad_string_in_array(tmp_path, tail, message):
    """The first faulty string of an array of three is named, whether cut off or not UTF-8."""
    payload = struct.pack("<IQ", 8, 3) + gguf_string(b"ab") + tail
    blob = build(kvs=[(b"tokens", 9, payload)])
    with pytest.raises(GGUFError, match=message):
        read_bytes(tmp_path, blob[:blob.index(payload) + len(payload)])  # the file ends with the array


def test_unknown_metadata_type(tmp_path):
    with pytest.raises(GGUFError, match="unknown metadata value type 13"):
        read_bytes(tmp_path, build(kvs=[(b"k", 13, b"\0" * 8)]))


def test_unknown_array_element_type(tmp_path):
    with pytest.raises(GGUFError, match="unknown array element type 99"):
        read_bytes(tmp_path, build(kvs=[(b"k", 9, struct.pack("<IQ", 99, 1))]))


def test_unknown_tensor_type(tmp_path):
    with pytest.raises(GGUFError, match="unknown or unsupported ggml type 77"):
        read_bytes(tmp_path, build(tensors=[(b"w", (32,), 77, 0)], data=b"\0" * 64))


def test_row_not_multiple_of_block(tmp_path):
    with pytest.raises(GGUFError, match="row length 40 is not a multiple of the Q4_0 block size 32"):
        read_bytes(tmp_path, build(tensors=[(b"w", (40, 2), 2, 0)], data=b"\0" * 64))


def test_invalid_utf8_key(tmp_path):
    with pytest.raises(GGUFError, match="not valid UTF-8"):
        read_bytes(tmp_path, build(kvs=[(b"\xff\xfe", 4, struct.pack("<I", 1))]))


def test_bad_alignment(tmp_path):
    kv = (b"general.alignment", 4, struct.pack("<I", 3))
    with pytest.raises(GGUFError, match="power of two"):
        read_bytes(tmp_path, build(kvs=[kv]))


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        read_gguf(tmp_path / "nope.gguf")


def nested_array(depth: int) -> bytes:
    """An array holding one array ... ``depth`` arrays deep, the innermost holding the uint32s 1 and 2."""
    return struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQII", 4, 2, 1, 2)


def test_nesting_to_the_limit_reads_as_the_gguf_package_reads_it(tmp_path):
    ours = read_bytes(tmp_path, build(kvs=[(b"k", 9, nested_array(MAX_ARRAY_DEPTH))]))
    assert_same_metadata(ours, gguf.GGUFReader(tmp_path / "bad.gguf"))


@pytest.mark.parametrize("depth", [MAX_ARRAY_DEPTH + 1, 335, 100_000])
def test_deeper_nesting_is_refused_before_the_stack_runs_out(tmp_path, depth):
    with pytest.raises(GGUFError, match=f"nests arrays more than {MAX_ARRAY_DEPTH} deep"):
        read_bytes(tmp_path, build(kvs=[(b"k", 9, nested_array(depth))]))


def test_duplicate_key(tmp_path):
    kv = (b"general.name", 8, gguf_string(b"x"))
    with pytest.raises(GGUFError, match="'general.name' appears twice"):
        read_bytes(tmp_path, build(kvs=[kv, kv]))
