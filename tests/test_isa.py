"""``ggml_isa``: the exact backends reproduce llama.cpp built for AVX2 or for AVX-512, on any host.

llama.cpp's logits from its AVX-512 build are stored in tests/data/golden-avx512 (see its
README): the tiny model, its requantisations, and SmolLM2-135M in Q4_1 and Q8_0, at several
prompt lengths, at every position of one prompt, and for 64 greedy tokens.  In the avx512
mode both exact backends must give them bit for bit; the AVX2 arithmetic must not (so the
mode is what makes them equal).  Which mode "auto" picks follows the CPU's flags.
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ArgumentError
from engine.isa import native_isa, resolve_isa
from engine.llama import Llama
from tests.tiny_shakespeare import MODEL_PATH as TINY

GOLDEN = Path(__file__).resolve().parent / "data" / "golden-avx512"
TINY_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"]
MODELS = ["tiny"] + [f"tiny-{t}" for t in TINY_TYPES] + ["smollm2-Q4_1", "smollm2-Q8_0"]


@pytest.fixture(scope="module")
def golden(tiny_quantised, smollm2):
    """``golden(name)`` -> (model path, its golden .npz), the file's sha256 checked against the record."""
    def get(name: str):
        family, _, qtype = name.partition("-")
        if family == "tiny":
            path = tiny_quantised(qtype) if qtype else TINY
            stored = f"tiny-shakespeare-{qtype.lower()}" if qtype else "tiny-shakespeare"
        else:
            path, stored = smollm2(None if qtype == "Q4_1" else qtype), f"smollm2-{qtype.lower()}"
        data = np.load(GOLDEN / f"{stored}.npz")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == str(data["sha256"]), f"{path} is not {stored}'s model"
        return path, data
    return get


def lengths(data) -> list[int]:
    return sorted(int(k.removeprefix("last_logits_")) for k in data.files if k.startswith("last_logits_"))


def greedy(llm: Llama, prompt: list[int], n: int) -> list[int]:
    """n tokens by argmax, one evaluation per token, as the golden run made them."""
    logits, out = llm.eval_logits(prompt)[-1], []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = llm.eval_logits(out[-1:], n_past=len(prompt) + len(out) - 1)[-1]
    return out


@pytest.mark.parametrize("name", MODELS)
def test_compiled_avx512_mode_reproduces_llama_cpp_avx512(golden, name):
    """Every file at every stored length and position; the 64 greedy tokens of all but SmolLM2's Q8_0
    (its Q4_1 file runs the same decoding steps, and each costs a forward pass)."""
    path, data = golden(name)
    with Llama(path, n_ctx=512, backend="cython", ggml_isa="avx512") as llm:
        for n in lengths(data):
            assert np.array_equal(llm.eval_logits(data[f"ids_{n}"].tolist())[-1], data[f"last_logits_{n}"]), n
        n = int(data["all_logits_n"])
        assert np.array_equal(llm.eval_logits(data[f"ids_{n}"].tolist()), data["all_logits"])
        if name != "smollm2-Q8_0":
            assert greedy(llm, data["greedy_prompt"].tolist(), 64) == data["greedy_64"].tolist()


@pytest.mark.parametrize("name", ["tiny", "tiny-Q2_K", "tiny-F16"])
def test_numpy_avx512_mode_reproduces_llama_cpp_avx512(golden, name):
    """The readable reference too, on the shorter prompts: the float dots, the repacked Q2_K, the vector exp."""
    path, data = golden(name)
    with Llama(path, n_ctx=512, backend="numpy", ggml_isa="avx512") as llm:
        for n in [n for n in lengths(data) if n <= 64]:
            assert np.array_equal(llm.eval_logits(data[f"ids_{n}"].tolist())[-1], data[f"last_logits_{n}"]), n
        n = int(data["all_logits_n"])
        assert np.array_equal(llm.eval_logits(data[f"ids_{n}"].tolist()), data["all_logits"])


@pytest.mark.parametrize("name", ["tiny-Q2_K", "tiny-Q5_1", "tiny-F16"])
def test_avx2_arithmetic_differs_from_llama_cpp_avx512(golden, name):
    path, data = golden(name)
    n = lengths(data)[-1]
    with Llama(path, n_ctx=512, backend="cython", ggml_isa="avx2") as llm:
        assert not np.array_equal(llm.eval_logits(data[f"ids_{n}"].tolist())[-1], data[f"last_logits_{n}"])


@pytest.mark.parametrize("flags, isa", [("fpu sse avx2 fma f16c", "avx2"),
                                        ("fpu avx2 avx512f avx512bw avx512vl avx512_bf16", "avx512"),
                                        ("fpu avx2 avx512_vnni", "avx2")])  # no AVX-512 foundation: not a 512-bit build
def test_native_isa_follows_the_cpu_flags(tmp_path, flags, isa):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\n")
    assert native_isa(str(cpuinfo)) == isa
    assert native_isa(str(tmp_path / "missing")) == "avx2"


def test_auto_follows_llamanp_ggml_isa_then_the_cpu(monkeypatch):
    monkeypatch.setenv("LLAMANP_GGML_ISA", "avx512")
    assert resolve_isa("auto") == "avx512" and resolve_isa("avx2") == "avx2"
    monkeypatch.delenv("LLAMANP_GGML_ISA")
    assert resolve_isa("auto") == native_isa()
    monkeypatch.setenv("LLAMANP_GGML_ISA", "sse4")
    with pytest.raises(ArgumentError, match="sse4"):
        resolve_isa("auto")


def test_unknown_isa_is_refused():
    with pytest.raises(ArgumentError, match="avx1024"):
        Llama(TINY, ggml_isa="avx1024")
