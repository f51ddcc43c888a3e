"""Fuzzing the loader: seeded, structure-aware mutations of a tiny valid GGUF (tests/gguf_mutations.py).

Each input must either load and run (evaluate a few tokens, generate one, tokenize, render a
chat prompt) or raise one of the library's own exceptions (LlamaError and its subclasses,
among them ChatTemplateError). On the mutations of the file's structure and metadata, what
llama.cpp loads must load here too, short of the few checks that are stricter here; and the
metadata llama.cpp refuses is refused here too. scripts/fuzz.py runs the same mutations by
the hundred thousand in memory-limited subprocesses.
"""
import collections
import copy
import os
import re
import subprocess
import sys

import gguf
import pytest

from engine import Llama
from engine.errors import LlamaError, ModelError
from tests import gguf_mutations as fuzz

N_CASES = 2000
N_LLAMA_CPP_CASES = 400


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return fuzz.Doc.read(fuzz.write_base_model(tmp_path_factory.mktemp("fuzz") / "base.gguf"))


def run_cases(base, directory, families, n):
    """Every case's outcome: 'ok', 'error' (a library exception), or the foreign exception's type, by family."""
    outcomes = collections.defaultdict(collections.Counter)
    foreign = []
    for seed in range(n):
        family, blob = fuzz.mutate(base, seed, families)
        try:
            fuzz.exercise(fuzz.write_case(directory, blob))
            outcomes[family]["ok"] += 1
        except LlamaError:
            outcomes[family]["error"] += 1
        except Exception as e:  # what the test is looking for
            outcomes[family][type(e).__name__] += 1
            foreign.append(f"seed {seed} ({family}): {type(e).__name__}: {str(e)[:200]}")
    return outcomes, foreign


def test_base_model_is_what_the_gguf_package_reads(base, tmp_path):
    """The mutator's encoder writes the base model byte for byte as GGUFWriter did, and llama.cpp loads it."""
    path = fuzz.write_case(tmp_path, base.encode())
    reader = gguf.GGUFReader(path)
    assert reader.fields["llama.embedding_length"].contents() == fuzz.DIM
    assert reader.fields["tokenizer.ggml.tokens"].contents() == fuzz.TOKENS
    assert len(reader.tensors) == 12
    assert llama_cpp_loads([path]) == [True]
    fuzz.exercise(path)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow and NaN from garbage weights
def test_mutations_load_or_raise_library_errors(base, tmp_path):
    outcomes, foreign = run_cases(base, tmp_path, fuzz.FAMILIES, N_CASES)
    assert not foreign, f"{len(foreign)} of {N_CASES} inputs raised foreign exceptions:\n" + "\n".join(foreign[:20])
    # every family reaches both sides: some inputs load, some are refused (else it tests nothing)
    refused = {family for family, counts in outcomes.items() if counts["error"]}
    assert refused == set(fuzz.FAMILIES) - {"tensor_data"}
    assert sum(counts["ok"] for counts in outcomes.values()) > N_CASES // 10


# ---- against llama.cpp ----------------------------------------------------------------------------------

# Each path read from stdin, loaded by llama.cpp: "loads 1" or "loads 0". A GGML_ASSERT aborts the process.
LOADER = """
import sys, llama_cpp
quiet = llama_cpp.llama_log_callback(lambda *_: None)
llama_cpp.llama_log_set(quiet, None)
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_default_params()
for line in sys.stdin:
    model = llama_cpp.llama_model_load_from_file(line.rstrip("\\n").encode(), params)
    print("loads", int(bool(model)), flush=True)
    if model:
        llama_cpp.llama_model_free(model)
"""


def llama_cpp_loads(paths) -> list[bool | None]:
    """Whether llama.cpp loads each file: True, False, or None where it aborts (a failed GGML_ASSERT);
    in subprocesses, a new one after each abort."""
    verdicts: list[bool | None] = []
    while len(verdicts) < len(paths):
        out = subprocess.run([sys.executable, "-c", LOADER], input="".join(f"{p}\n" for p in paths[len(verdicts):]),
                             capture_output=True, text=True, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
        verdicts += [line == "loads 1" for line in out.stdout.splitlines() if line.startswith("loads ")]
        if len(verdicts) < len(paths):
            verdicts.append(None)
    return verdicts


# The checks stricter than llama.cpp's, by the start of their messages (after the path): values llama.cpp
# takes without a word but that give NaN or nonsense (a negative epsilon, an infinite RoPE factor, a
# context of 0), RoPE scaling not implemented here, and tensor types this engine does not compute with.
STRICTER = ("metadata llama.", "rope scaling", "tensor")
STRICTER_DETAIL = ("is outside [", "is not supported", "a type llamanp cannot multiply", "must be an F32 or F16 vector")
# The families that change the structure or the hyperparameters, not the vocabulary, template or data.
FILE_FAMILIES = {name: m for name, m in fuzz.FAMILIES.items()
                 if name not in ("tokenizer_vocab", "tokenizer_ids", "tokenizer_values", "chat_template", "tensor_data",
                                 "mixed", "bitflip")}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_llama_cpp_and_we_agree_on_what_loads(base, tmp_path):
    """What llama.cpp loads, we load (but for the stricter checks above); metadata llama.cpp refuses,
    or aborts on, we refuse. Where llama.cpp refuses a file's layout (tensors not back to back, unused
    tensors, nested arrays in unused keys) we may load it: those do not change what a model computes."""
    paths, families = [], []
    for seed in range(N_LLAMA_CPP_CASES):
        family, blob = fuzz.mutate(base, seed, FILE_FAMILIES)
        paths.append(tmp_path / f"{seed}.gguf")
        paths[-1].write_bytes(blob)
        families.append(family)
    theirs = llama_cpp_loads(paths)
    disagreements, agreed = [], collections.Counter()
    for path, family, loads in zip(paths, families, theirs):
        try:
            Llama(path, n_threads=1).close()
            ours = None
        except LlamaError as e:
            ours = str(e).removeprefix(f"{path}: ")
        if loads and ours is not None and not (ours.startswith(STRICTER) and any(d in ours for d in STRICTER_DETAIL)):
            disagreements.append(f"{path.name} ({family}): llama.cpp loads it, we refuse: {ours}")
        if not loads and ours is None and family in ("hparam", "value_type"):
            disagreements.append(f"{path.name} ({family}): llama.cpp {'aborts on' if loads is None else 'refuses'} "
                                 "it, we load it")
        agreed[(loads, ours is None)] += 1
    assert not disagreements, "\n".join(disagreements)
    assert agreed[(True, True)] and agreed[(False, False)]  # both sides reached


# ---- one wrong value at a time --------------------------------------------------------------------------

def kv(key: str, vtype: int, value):
    return key.encode(), vtype, fuzz.encode(vtype, value)


TOKENS_PLUS_ONE = (fuzz.STRING, [t.encode() for t in fuzz.TOKENS] + [b"extra"])
# (edit of the base model, what our error says, whether llama.cpp loads the file): llama.cpp refuses
# wrong types and shapes, aborts (a failed GGML_ASSERT) on a layer count out of range, and loads values
# that are in its type's range but give NaN or are not implemented here
CASES = {
    "ctx-float-inf": (kv("llama.context_length", fuzz.FLOAT32, float("inf")), "must be UINT32", False),
    "ctx-float-nan": (kv("llama.context_length", fuzz.FLOAT64, float("nan")), "got FLOAT64 nan", False),
    "ctx-uint64": (kv("llama.context_length", fuzz.UINT64, 32), "must be UINT32, as llama.cpp reads it", False),
    "ctx-string": (kv("llama.context_length", fuzz.STRING, "32"), "got STRING '32'", False),
    "layers-array": (kv("llama.block_count", fuzz.ARRAY, (fuzz.UINT32, [1, 1])), "got an array of 2", False),
    "layers-0": (kv("llama.block_count", fuzz.UINT32, 0), "block_count = 0 is outside [1, 512]", None),
    "layers-513": (kv("llama.block_count", fuzz.UINT32, 513), "outside [1, 512]", None),
    "width-negative": (kv("llama.embedding_length", fuzz.INT32, -32), "got INT32 -32", False),
    "width-2^21": (kv("llama.embedding_length", fuzz.UINT32, 2**21), "outside [1, 1048576]", False),
    "ffn-2^32-1": (kv("llama.feed_forward_length", fuzz.UINT32, 2**32 - 1), "outside [1, 1048576]", False),
    "heads-0": (kv("llama.attention.head_count", fuzz.UINT32, 0), "head_count = 0 is outside", False),
    "kv-heads-3": (kv("llama.attention.head_count_kv", fuzz.UINT32, 3), "head_count_kv 3 groups", False),
    "rope-dims-4": (kv("llama.rope.dimension_count", fuzz.UINT32, 4), "must equal the head size 8", False),
    "eps-string": (kv("llama.attention.layer_norm_rms_epsilon", fuzz.STRING, "1e-5"), "must be FLOAT32", False),
    "arch-uint32": (kv("general.architecture", fuzz.UINT32, 1), "architecture UINT32 1 is not supported", False),
    "scaling-uint32": (kv("llama.rope.scaling.type", fuzz.UINT32, 1), "rope scaling UINT32 1 is not", False),
    "vocab-273+1": (kv("tokenizer.ggml.tokens", fuzz.ARRAY, TOKENS_PLUS_ONE), "has shape [32, 273], expected [32, 274]",
                    False),
    "eps-negative": (kv("llama.attention.layer_norm_rms_epsilon", fuzz.FLOAT32, -1.0), "= -1.0 is outside", True),
    "eps-nan": (kv("llama.attention.layer_norm_rms_epsilon", fuzz.FLOAT32, float("nan")), "= nan is outside", True),
    "rope-base-0": (kv("llama.rope.freq_base", fuzz.FLOAT32, 0.0), "freq_base = 0.0 is outside", True),
    "rope-factor-inf": (kv("llama.rope.scaling.factor", fuzz.FLOAT32, float("inf")), "= inf is outside", True),
    "rope-yarn": (kv("llama.rope.scaling.type", fuzz.STRING, "yarn"), "rope scaling STRING 'yarn' is not", True),
}


@pytest.fixture(scope="module")
def cases(base, tmp_path_factory):
    """Each case's file, and whether llama.cpp loads it."""
    directory = tmp_path_factory.mktemp("cases")
    paths = {}
    for name, (entry, _, _) in CASES.items():
        doc = copy.deepcopy(base)
        doc.set(*entry)
        paths[name] = directory / f"{name}.gguf"
        paths[name].write_bytes(doc.encode())
    return {name: (path, loads) for (name, path), loads in zip(paths.items(), llama_cpp_loads(list(paths.values())))}


@pytest.mark.parametrize("name", CASES)
def test_wrong_metadata_is_a_model_error(name, cases):
    path, llama_cpp_verdict = cases[name]
    _, message, expected_verdict = CASES[name]
    assert llama_cpp_verdict == expected_verdict
    with pytest.raises(ModelError, match=re.escape(message)):
        Llama(path)
