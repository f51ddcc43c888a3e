"""The llamanp command line, run as a user runs it: a subprocess, stdout, stderr and exit status."""
import math
import re
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest

from engine import Llama
from engine.sampling import greedy
from llama_cpp_vocab import LlamaCppVocab

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=64)


def llamanp(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(**SMALL)


def test_info_lists_metadata_and_tensors(model):
    out = llamanp("info", "--model", model)
    assert out.returncode == 0, out.stderr
    assert "general.architecture = 'llama'" in out.stdout
    assert "llama.embedding_length = 64" in out.stdout
    assert "blk.1.ffn_down.weight" in out.stdout and "64×128" in out.stdout


def shown_bytes(shown: str) -> bytes:
    """The bytes a piece shown by ``llamanp tokenize`` stands for (its escapes undone)."""
    escapes = {"\\n": b"\n", "\\t": b"\t", "\\\\": b"\\"}
    parts = re.findall(r"\\x[0-9a-f]{2}|\\[nt\\]|[^\\]", shown)
    assert "".join(parts) == shown, shown
    return b"".join(bytes.fromhex(p[2:]) if p.startswith("\\x") else escapes.get(p) or p.encode() for p in parts)


@pytest.mark.parametrize("vocab, text", [
    ("llama-spm", "Hello world 😊\n\tcafé <s>"),
    ("llama-bpe", "Hello world 😊\n\tcafé 🦙 \\ <|eot_id|>"),
])
def test_tokenize_prints_ids_and_readable_pieces(llama_cpp_vocabs, vocab, text):
    """Each line: llama.cpp's id and its piece (special tokens spelled out) as text, whole
    characters as they are and the bytes of a character split over tokens escaped."""
    path = llama_cpp_vocabs / f"ggml-vocab-{vocab}.gguf"
    ref = LlamaCppVocab(path)
    for special in (False, True):
        out = llamanp("tokenize", "--model", path, *(["--special"] if special else []), text)
        assert out.returncode == 0, out.stderr
        lines = [re.fullmatch(r" *(\d+)  '(.*)'", line).groups() for line in out.stdout.splitlines()]
        assert [int(i) for i, _ in lines] == ref.tokenize(text, special=special)
        assert [shown_bytes(shown) for _, shown in lines] == [ref.token_to_piece(int(i), True) for i, _ in lines]
        assert any("\\x" in shown for _, shown in lines)  # 😊's bytes: byte tokens, or split by BPE
        assert any("é" in shown for _, shown in lines)


def test_generate_streams_the_greedy_continuation(model):
    prompt = "Once upon a time"
    out = llamanp("generate", "--model", model, "--prompt", prompt, "--sampler", "greedy", "-n", "12")
    assert out.returncode == 0, out.stderr
    with Llama(model) as llm:
        expected = llm.generate_string(prompt, sampler=greedy, max_tokens=12)
    assert out.stdout == prompt + expected + "\n"
    assert "generated" in out.stderr


def test_generate_reads_the_prompt_from_stdin(model):
    out = llamanp("generate", "--model", model, "--sampler", "greedy", "-n", "4", stdin="Hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Hello")


def test_top_shows_the_most_and_least_likely(model):
    out = llamanp("top", "--model", model, "-k", "3", "Clojure is a")
    assert out.returncode == 0, out.stderr
    with Llama(model) as llm:
        logits = llm.get_logits("Clojure is a")
    lines = out.stdout.splitlines()
    assert lines[0] == "most likely:" and lines[4] == "least likely:"
    assert int(lines[1].split()[0]) == int(np.argmax(logits))
    assert int(lines[5].split()[0]) == int(np.argmin(logits))


def test_perplexity_matches_llama_cpp(model, tmp_path):
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 12
    path = tmp_path / "text.txt"
    path.write_text(text)
    out = llamanp("perplexity", "--model", model, "--file", path, "--ctx", 64)
    assert out.returncode == 0, out.stderr
    ours = float(out.stdout.split()[1])

    # the same windows scored with llama.cpp's logits
    ref = llama_cpp.Llama(model_path=str(model), n_ctx=64, logits_all=True, verbose=False)
    tokens = ref.tokenize(text.encode(), add_bos=True)
    nll, count = 0.0, 0
    for c in range(len(tokens) // 64):
        window = [ref.token_bos()] + tokens[c * 64 + 1:(c + 1) * 64]
        ref.reset()
        ref.eval(window)
        logits = np.asarray(ref.scores[:64], dtype=np.float64)
        for pos in range(32, 63):
            row = logits[pos]
            nll += np.log(np.exp(row - row.max()).sum()) + row.max() - row[window[pos + 1]]
            count += 1
    assert ours == pytest.approx(math.exp(nll / count), rel=1e-3)


@pytest.mark.parametrize("args, message", [
    (["info", "--model", "/no/such/model.gguf"], "cannot open"),
    (["generate", "--model", "{model}", "-p", "x", "-n", "-1"], "max_tokens"),
    (["generate", "--model", "{model}", "-p", "x", "--sampler", "chain", "--top-p", "1.5"], "top_p"),
    (["perplexity", "--model", "{model}", "--file", "/no/such/file.txt"], "No such file"),
])
def test_user_errors_are_one_line(model, args, message):
    out = llamanp(*[a.format(model=model) for a in args])
    assert out.returncode == 1
    assert out.stderr.startswith("llamanp: error:") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    out = llamanp("info", "--model", path)
    assert out.returncode == 1 and "not a GGUF file" in out.stderr and "Traceback" not in out.stderr
