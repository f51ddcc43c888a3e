"""Structure-aware mutations of a tiny valid GGUF model, shared by tests/test_fuzz.py and scripts/fuzz.py.

The base model is written by the ``gguf`` package's GGUFWriter and read back by its
GGUFReader into a ``Doc``: header fields, metadata entries (key, type tag, encoded
value) and tensor infos (name, dims, type tag, offset), plus the data section. A
mutation edits one part of the ``Doc`` (or of its bytes) and ``Doc.encode`` writes
the result, so each input is wrong in one deliberate place and right elsewhere —
what reaches the loader's deeper checks, unlike random bytes.

    base = Doc.read(write_base_model(tmp / "base.gguf"))
    family, blob = mutate(base, seed)     # seed picks the family (round robin) and the mutation
    exercise(write_case(tmp, blob))       # loads, evaluates, generates, renders a chat; or raises

Nothing here imports ``engine`` except ``exercise``, which is what is under test.
"""
from __future__ import annotations

import copy
import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GGUF metadata value type tags
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
                  FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
INT_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)
ALIGNMENT = 32

# ---- the base model: one layer, 32 wide, a 273-token SentencePiece vocabulary ---------------------------

DIM, N_HEADS, N_KV_HEADS, FFN, N_CTX = 32, 4, 2, 64, 32
SPACE = "\u2581"
PIECES = [SPACE, "e", "h", "t", "i", "H", SPACE + "t", "he", SPACE + "the", SPACE + "H", SPACE + "Hi", SPACE + "a"]
USER_DEFINED = ["<|im_start|>", "<|im_end|>"]
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES + USER_DEFINED
TOKEN_TYPES = [2, 3, 3] + [6] * 256 + [1] * len(PIECES) + [4] * len(USER_DEFINED)
SCORES = [0.0] * 259 + [-float(i) for i in range(len(PIECES))] + [0.0] * len(USER_DEFINED)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_base_model(path: str | Path) -> Path:
    """The valid model every mutation starts from: F32 weights but one F16 and one Q8_0 matrix, a chat template."""
    import gguf

    rng = np.random.default_rng(0)
    kv_dim = DIM // N_HEADS * N_KV_HEADS
    shapes = {  # NumPy order: (rows, row length)
        "token_embd.weight": (len(TOKENS), DIM), "blk.0.attn_norm.weight": (DIM,),
        "blk.0.attn_q.weight": (DIM, DIM), "blk.0.attn_k.weight": (kv_dim, DIM), "blk.0.attn_v.weight": (kv_dim, DIM),
        "blk.0.attn_output.weight": (DIM, DIM), "blk.0.ffn_norm.weight": (DIM,),
        "blk.0.ffn_gate.weight": (FFN, DIM), "blk.0.ffn_up.weight": (FFN, DIM), "blk.0.ffn_down.weight": (DIM, FFN),
        "output_norm.weight": (DIM,), "output.weight": (len(TOKENS), DIM),
    }
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(DIM)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_rope_dimension_count(DIM // N_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores(SCORES)
    w.add_token_types(TOKEN_TYPES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(CHATML)
    for name, shape in shapes.items():
        x = (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)
        if name == "blk.0.attn_q.weight":
            w.add_tensor(name, x.astype(np.float16))
        elif name == "blk.0.ffn_down.weight":
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(x, q8), raw_dtype=q8)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- a GGUF file as editable parts ----------------------------------------------------------------------

@dataclass
class Tensor:
    name: bytes
    dims: list[int]          # ggml order
    type: int
    offset: int              # from the start of the data section
    n_dims: int | None = None  # what the file says the rank is; None: len(dims)


@dataclass
class Doc:
    """A GGUF file's parts; ``n_tensors``/``n_kv`` override the header's counts when set."""
    version: int
    kvs: list[tuple[bytes, int, bytes]]  # key, value type tag, encoded value
    tensors: list[Tensor]
    data: bytes
    magic: bytes = b"GGUF"
    n_tensors: int | None = None
    n_kv: int | None = None

    @classmethod
    def read(cls, path: str | Path) -> "Doc":
        """Split a file into parts with the gguf package's reader."""
        import gguf

        reader = gguf.GGUFReader(path)
        raw = Path(path).read_bytes()
        kvs = [(f.name.encode(), int(f.types[0]), b"".join(p.tobytes() for p in f.parts[3:]))
               for f in reader.fields.values() if not f.name.startswith("GGUF.")]
        tensors = [Tensor(t.name.encode(), [int(d) for d in t.shape], int(t.tensor_type),
                          int(t.data_offset) - reader.data_offset) for t in reader.tensors]
        version = int(reader.fields["GGUF.version"].parts[-1][0])
        return cls(version, kvs, tensors, raw[reader.data_offset:])

    def encode(self) -> bytes:
        out = [self.magic, struct.pack("<IQQ", self.version,
                                       len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                       len(self.kvs) if self.n_kv is None else self.n_kv)]
        for key, vtype, payload in self.kvs:
            out += [string(key), struct.pack("<I", vtype), payload]
        for t in self.tensors:
            n_dims = len(t.dims) if t.n_dims is None else t.n_dims
            out += [string(t.name), struct.pack("<I", n_dims), struct.pack(f"<{len(t.dims)}Q", *t.dims),
                    struct.pack("<IQ", t.type, t.offset)]
        head = b"".join(out)
        return head + b"\0" * (-len(head) % ALIGNMENT) + self.data

    def find(self, key: bytes) -> int | None:
        return next((i for i, kv in enumerate(self.kvs) if kv[0] == key), None)

    def set(self, key: bytes, vtype: int, payload: bytes) -> None:
        """Replace ``key``'s entry in place, or append it."""
        i = self.find(key)
        if i is None:
            self.kvs.append((key, vtype, payload))
        else:
            self.kvs[i] = (key, vtype, payload)


def string(s: bytes | str) -> bytes:
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


def encode(vtype: int, value) -> bytes:
    """A metadata value: bytes/str for STRING, (element type, items) for ARRAY, else a number
    (ints wrap to the type's width, floats round to float32 for FLOAT32)."""
    if vtype == STRING:
        return string(value)
    if vtype == ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(encode(etype, x) for x in items)
    fmt = SCALAR_FORMATS[vtype]
    if vtype in INT_TYPES or vtype == BOOL:
        bits = 8 * struct.calcsize(fmt)
        value = int(value) & ((1 << bits) - 1)
        if fmt[1].islower() and value >= 1 << (bits - 1):
            value -= 1 << bits
        return struct.pack(fmt, value)
    if vtype == FLOAT32:
        with np.errstate(over="ignore"):
            return np.float64(value).astype("<f4").tobytes()
    return struct.pack(fmt, value)


# ---- interesting values ---------------------------------------------------------------------------------

INTS = [0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 63, 64, 65, 128, 255, 256, 1023, 2**15, 2**16 - 1, 2**16,
        2**20, 2**20 + 1, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53 + 1, 2**62, 2**63 - 1,
        2**64 - 1, -1, -2, -32, -2**31, -2**63]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 64.0, 64.5, 1e-5, 1e-45, 1e-300, 1e30, 1e39, 1e300,
          math.inf, -math.inf, math.nan, 3.4028235e38]
STRINGS = [b"", b"llama", b"gpt2", b"64", b"none", b"linear", b"yarn", b"\xff\xfe", "\u00e9\U0001F60A".encode(),
           b"\0", b"a" * 1000]


def random_value(rng: random.Random, depth: int = 0) -> tuple[int, bytes]:
    """A value of a random type, valid or not (unknown type tags come with a few raw bytes)."""
    roll = rng.random()
    if roll < 0.35:
        vtype = rng.choice(INT_TYPES)
        return vtype, encode(vtype, rng.choice(INTS) if rng.random() < 0.8 else rng.getrandbits(64))
    if roll < 0.5:
        vtype = rng.choice((FLOAT32, FLOAT64))
        return vtype, encode(vtype, rng.choice(FLOATS))
    if roll < 0.58:
        return BOOL, encode(BOOL, rng.choice((0, 1, 2, 255)))
    if roll < 0.72:
        return STRING, encode(STRING, rng.choice(STRINGS))
    if roll < 0.95 and depth < 3:
        return ARRAY, random_array(rng, depth)
    return rng.choice((13, 99, 2**31, 2**32 - 1)), rng.randbytes(rng.choice((0, 1, 8, 16)))


def random_array(rng: random.Random, depth: int = 0) -> bytes:
    n = rng.choice((0, 1, 2, 3, 5, 273))
    roll = rng.random()
    if roll < 0.5:
        etype = rng.choice(INT_TYPES + (FLOAT32, FLOAT64))
        pool = INTS if etype in INT_TYPES else FLOATS
        return encode(ARRAY, (etype, [rng.choice(pool) for _ in range(n)]))
    if roll < 0.8:
        return encode(ARRAY, (STRING, [rng.choice(STRINGS) for _ in range(n)]))
    items = [random_array(rng, depth + 1) for _ in range(min(n, 3))]
    return struct.pack("<IQ", ARRAY, len(items)) + b"".join(items)


def nested(depth: int, innermost: bytes) -> bytes:
    """An array holding an array ... ``depth`` deep, the innermost being the encoded array ``innermost``."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + innermost


# ---- mutation families ----------------------------------------------------------------------------------

HPARAM_KEYS = [b"llama." + k for k in (
    b"context_length", b"embedding_length", b"block_count", b"feed_forward_length", b"attention.head_count",
    b"attention.head_count_kv", b"rope.dimension_count", b"rope.freq_base", b"attention.layer_norm_rms_epsilon",
    b"rope.scaling.type", b"rope.scaling.factor", b"rope.scale_linear")] + [b"general.architecture"]
TOKENIZER_ID_KEYS = [b"tokenizer.ggml." + k for k in (
    b"bos_token_id", b"eos_token_id", b"unknown_token_id", b"add_bos_token", b"add_eos_token",
    b"add_space_prefix", b"model")]
TOKENIZER_VOCAB_KEYS = [b"tokenizer.ggml.tokens", b"tokenizer.ggml.scores", b"tokenizer.ggml.token_type"]


def m_header(doc: Doc, rng: random.Random) -> bytes:
    what = rng.choice(("magic", "version", "n_tensors", "n_kv"))
    if what == "magic":
        doc.magic = rng.choice((b"GGUF"[::-1], b"GGML", b"\0\0\0\0", rng.randbytes(4)))
    elif what == "version":
        doc.version = rng.choice((0, 1, 2, 4, 0x03000000, 2**32 - 1))
    else:
        true = len(doc.tensors) if what == "n_tensors" else len(doc.kvs)
        setattr(doc, what, rng.choice((0, true - 1, true + 1, 2 * true, 2**32, 2**63, 2**64 - 1)))
    return doc.encode()


def m_hparam(doc: Doc, rng: random.Random) -> bytes:
    """A hyperparameter (present or not) set to an edge value, mostly of the type llama.cpp reads
    (UINT32 or FLOAT32) so the range checks are reached, or to anything."""
    key = rng.choice(HPARAM_KEYS)
    roll = rng.random()
    if roll < 0.45:
        vtype = rng.choice((UINT32, UINT32, UINT32, UINT32, INT32, UINT64, INT64, UINT8, INT16))
        doc.set(key, vtype, encode(vtype, rng.choice(INTS)))
    elif roll < 0.7:
        vtype = rng.choice((FLOAT32, FLOAT32, FLOAT32, FLOAT64))
        doc.set(key, vtype, encode(vtype, rng.choice(FLOATS)))
    else:
        doc.set(key, *random_value(rng))
    return doc.encode()


def entry(doc: Doc, rng: random.Random, tokenizer: bool) -> int:
    """A random metadata entry's index: one of tokenizer.ggml.* or one of the others."""
    return rng.choice([i for i, kv in enumerate(doc.kvs) if kv[0].startswith(b"tokenizer.ggml.") == tokenizer])


def m_value_type(doc: Doc, rng: random.Random, tokenizer: bool = False) -> bytes:
    """An entry's value replaced by one of another (or an unknown) type."""
    i = entry(doc, rng, tokenizer)
    doc.kvs[i] = (doc.kvs[i][0], *random_value(rng))
    return doc.encode()


def m_nesting(doc: Doc, rng: random.Random, tokenizer: bool = False) -> bytes:
    """An entry's value replaced by arrays nested 1 to 5000 deep."""
    i = entry(doc, rng, tokenizer)
    depth = rng.choice((1, 2, 3, 7, 8, 9, 10, 50, 335, 1000, 5000))
    innermost = encode(ARRAY, rng.choice(((UINT32, [1, 2]), (STRING, [b"x"]), (UINT8, []))))
    doc.kvs[i] = (doc.kvs[i][0], ARRAY, nested(depth, innermost))
    return doc.encode()


def m_key_name(doc: Doc, rng: random.Random) -> bytes:
    i = rng.randrange(len(doc.kvs))
    key, vtype, payload = doc.kvs[i]
    what = rng.choice(("rename", "delete", "duplicate", "other_arch"))
    if what == "delete":
        del doc.kvs[i]
    elif what == "duplicate":
        doc.kvs.insert(rng.randrange(len(doc.kvs) + 1), (key, *random_value(rng)))
    elif what == "other_arch":
        doc.kvs[i] = (key.replace(b"llama.", b"gpt2.").replace(b"tokenizer.ggml.", b"tokenizer.gguf."), vtype, payload)
    else:
        new = rng.choice((b"", b"\xff\xfe", b"x" * 10000, rng.choice(doc.kvs)[0], key + b"\0", key.upper()))
        doc.kvs[i] = (new, vtype, payload)
    return doc.encode()


def m_array_length(doc: Doc, rng: random.Random) -> bytes:
    """An array's element count rewritten, its elements left as they are."""
    arrays = [i for i, kv in enumerate(doc.kvs) if kv[1] == ARRAY]
    i = rng.choice(arrays)
    key, vtype, payload = doc.kvs[i]
    n = struct.unpack_from("<Q", payload, 4)[0]
    count = rng.choice((0, 1, n - 1, n + 1, 2 * n, 2**31, 2**32, 2**62, 2**63, 2**64 - 1)) % 2**64
    doc.kvs[i] = (key, vtype, payload[:4] + struct.pack("<Q", count) + payload[12:])
    return doc.encode()


def m_tensor_dims(doc: Doc, rng: random.Random) -> bytes:
    t = rng.choice(doc.tensors)
    what = rng.choice(("edge", "scale", "swap", "rank", "n_dims"))
    if what == "edge":
        t.dims[rng.randrange(len(t.dims))] = rng.choice((0, 1, 2, 16, 31, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64 - 1))
    elif what == "scale":
        j = rng.randrange(len(t.dims))
        t.dims[j] = max(1, t.dims[j] * 2 if rng.random() < 0.5 else t.dims[j] // 2)
    elif what == "swap":
        t.dims.reverse()
    elif what == "rank":
        t.dims = t.dims + [1] * rng.randint(1, 4) if rng.random() < 0.5 else t.dims[:1]
    else:
        t.n_dims = rng.choice((0, len(t.dims) - 1, len(t.dims) + 1, 5, 2**32 - 1))
    return doc.encode()


def m_tensor_type(doc: Doc, rng: random.Random) -> bytes:
    t = rng.choice(doc.tensors)
    t.type = rng.choice((*range(0, 42), 2**31, 2**32 - 1)) if rng.random() < 0.8 else rng.choice((0, 1, 8, 30))
    return doc.encode()


def m_tensor_offset(doc: Doc, rng: random.Random) -> bytes:
    t = rng.choice(doc.tensors)
    t.offset = rng.choice((0, t.offset + 1, t.offset + ALIGNMENT, t.offset - ALIGNMENT, len(doc.data),
                           len(doc.data) - ALIGNMENT, 2**32, 2**63, 2**64 - 1, rng.choice(doc.tensors).offset))
    t.offset %= 2**64
    return doc.encode()


def m_tensor_table(doc: Doc, rng: random.Random) -> bytes:
    i = rng.randrange(len(doc.tensors))
    what = rng.choice(("rename", "delete", "duplicate", "extra"))
    if what == "delete":
        del doc.tensors[i]
    elif what == "duplicate":
        doc.tensors.insert(rng.randrange(len(doc.tensors)), copy.deepcopy(doc.tensors[i]))
    elif what == "extra":
        doc.tensors.append(Tensor(b"blk.1.attn_q.weight", [DIM, DIM], 0, 0))
    else:
        doc.tensors[i].name = rng.choice((b"", b"\xff", b"blk.0.attn_q.weight", b"output.weight", b"x" * 5000))
    return doc.encode()


def m_alignment(doc: Doc, rng: random.Random) -> bytes:
    vtype = rng.choice((UINT32, UINT32, UINT64, INT32, BOOL, FLOAT32, STRING))
    value = rng.choice(STRINGS) if vtype == STRING else rng.choice(INTS + [1, 2, 8, 64, 3])
    doc.set(b"general.alignment", vtype, encode(vtype, value))
    return doc.encode()


def m_tensor_data(doc: Doc, rng: random.Random) -> bytes:
    """Tensor bytes overwritten: all-ones bits (NaN in floats, odd scales in Q8_0), zeros, or noise."""
    data = bytearray(doc.data)
    start = rng.randrange(len(data))
    n = rng.choice((1, 16, 256, 4096))
    fill = rng.choice((b"\xff" * n, b"\0" * n, rng.randbytes(n)))
    data[start:start + n] = fill[:len(data) - start]
    doc.data = bytes(data)
    return doc.encode()


def m_truncate(doc: Doc, rng: random.Random) -> bytes:
    blob = doc.encode()
    head = len(blob) - len(doc.data)
    return blob[:rng.randrange(head + 64) if rng.random() < 0.8 else rng.randrange(len(blob))]


def m_bitflip(doc: Doc, rng: random.Random) -> bytes:
    """A few random bytes of the header, metadata and tensor table changed."""
    blob = bytearray(doc.encode())
    head = len(blob) - len(doc.data)
    for _ in range(rng.randint(1, 8)):
        blob[rng.randrange(head)] = rng.randrange(256)
    return bytes(blob)


def m_tokenizer_ids(doc: Doc, rng: random.Random) -> bytes:
    """Special token ids, add_* flags and the tokenizer model: edge values of any type."""
    key = rng.choice(TOKENIZER_ID_KEYS)
    if rng.random() < 0.5:
        vtype = rng.choice((UINT32, INT32, UINT64, INT64))
        doc.set(key, vtype, encode(vtype, rng.choice(INTS + [len(TOKENS) - 1, len(TOKENS)])))
    else:
        doc.set(key, *random_value(rng))
    return doc.encode()


def m_tokenizer_values(doc: Doc, rng: random.Random) -> bytes:
    """A tokenizer.ggml.* value replaced by one of another type, or by nested arrays."""
    return rng.choice((m_value_type, m_nesting))(doc, rng, tokenizer=True)


def m_tokenizer_vocab(doc: Doc, rng: random.Random) -> bytes:
    """The token, score and type lists: shortened, lengthened, retyped, or with bad entries."""
    key = rng.choice(TOKENIZER_VOCAB_KEYS)
    base = {b"tokenizer.ggml.tokens": (STRING, [t.encode() for t in TOKENS]),
            b"tokenizer.ggml.scores": (FLOAT32, SCORES), b"tokenizer.ggml.token_type": (INT32, TOKEN_TYPES)}[key]
    etype, items = base[0], list(base[1])
    what = rng.choice(("shorten", "lengthen", "entry", "etype", "empty"))
    if what == "shorten":
        items = items[:rng.randrange(len(items))]
    elif what == "lengthen":
        items += items[:rng.choice((1, 300))]
    elif what == "entry":
        j = rng.randrange(len(items))
        items[j] = rng.choice(STRINGS) if etype == STRING else rng.choice(INTS if etype == INT32 else FLOATS)
    elif what == "etype":
        etype = rng.choice((UINT8, INT64, FLOAT64, STRING, BOOL))
        items = [0] * len(items) if etype != STRING else [b"%d" % v for v in range(len(items))]
    else:
        items = []
    doc.set(key, ARRAY, encode(ARRAY, (etype, items)))
    return doc.encode()


# Templates a user may meet or an attacker may write; each must render or raise ChatTemplateError.
TEMPLATES = [
    CHATML,
    "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}",
    "{{ messages | tojson }}{{ strftime_now('%Y') }}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    "{{ raise_exception('only user and assistant roles are supported') }}",
    "{% if %}", "{{", "{# unclosed", "{% for %}", "{% endfor %}", "", "\0",
    "{{ messages.__class__.__mro__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}", "{{ undefined_name.attr }}", "{{ messages[7].content.upper() }}",
    "{{ 'a' * 1000000000 }}", "{{ [1] * 1000000000 }}", "{{ 10 ** 100000000 }}",
    "{% for i in range(1000000000) %}{% endfor %}", "{{ range(10) | list | tojson }}",
    "{{ 1 / 0 }}", "{{ messages[0]['content'] | int }}", "{% include 'other.html' %}",
    "{% extends 'base.html' %}", "{% import 'macros' as m %}",
    # work and depth without bound: the sandbox's budget stops them
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}",
    "{% set s = 'ab' %}{% for i in range(99999) %}{% set s = s ~ s %}{% endfor %}",
]


def m_chat_template(doc: Doc, rng: random.Random) -> bytes:
    """tokenizer.chat_template replaced by one of ``TEMPLATES``, or by a value that is not text."""
    if rng.random() < 0.85:
        doc.set(b"tokenizer.chat_template", STRING, encode(STRING, rng.choice(TEMPLATES)))
    else:
        doc.set(b"tokenizer.chat_template", *random_value(rng))
    return doc.encode()


def m_mixed(doc: Doc, rng: random.Random) -> bytes:
    """Two to four structural mutations on top of each other."""
    for _ in range(rng.randint(2, 4)):
        rng.choice(STRUCTURAL)(doc, rng)
    return doc.encode()


def by_name(*mutators) -> dict:
    return {m.__name__[2:]: m for m in mutators}


STRUCTURAL = [m_header, m_hparam, m_value_type, m_nesting, m_key_name, m_array_length, m_tensor_dims,
              m_tensor_type, m_tensor_offset, m_tensor_table, m_alignment, m_tensor_data]
FAMILIES = by_name(*STRUCTURAL, m_truncate, m_bitflip, m_tokenizer_vocab, m_tokenizer_ids, m_tokenizer_values,
                   m_chat_template, m_mixed)


def family(seed: int, families: dict) -> str:
    """The family of the ``seed``-th input: round robin over the names of ``families``."""
    names = sorted(families)
    return names[seed % len(names)]


def mutate(base: Doc, seed: int, families: dict | None = None) -> tuple[str, bytes]:
    """The ``seed``-th input: its family and its bytes."""
    families = FAMILIES if families is None else families
    name = family(seed, families)
    rng = random.Random(seed)
    return name, families[name](copy.deepcopy(base), rng)


def exercise(path: str | Path) -> None:
    """What a user does first with a model file: load it, tokenize text and evaluate a few of its
    tokens and the vocabulary's last id, generate a token, untokenize, render a chat prompt.
    Returns, or raises what the library raised."""
    from engine import Llama
    from engine.chat import Chat

    with Llama(path, n_threads=1) as llm:
        ids = llm.tokenize("Hi the <|im_start|> \u00e9\U0001F60A", special=True)
        llm.update(ids[:3])
        llm.update([llm.n_vocab - 1])
        llm.logits
        # a sampler of our own: the library's refuse NaN logits, which corrupt weights produce (as in llama.cpp)
        list(llm.generate(ids[:3], sampler=lambda logits: len(logits) - 1, max_tokens=1))
        llm.untokenize(ids, special=True)
        Chat(llm, system="Be brief.").prompt_tokens([{"role": "user", "content": "Hi"}])


def write_case(directory: Path, blob: bytes) -> Path:
    """``blob`` as a fresh file (a new inode, so no mmap of an earlier case sees its bytes change)."""
    path = directory / "case.gguf"
    path.unlink(missing_ok=True)
    path.write_bytes(blob)
    return path
