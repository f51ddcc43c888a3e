"""The llamanp command line, run as a user runs it: a subprocess, stdout, stderr and exit status."""
import math
import os
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest

from engine import Llama
from engine.sampling import greedy
from engine.tokenizer import Tokenizer

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=64)


def llamanp(*args, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``llamanp ARGS`` in a subprocess; ``env`` adds to (or overrides) the environment."""
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], input=stdin,
                          env=os.environ | (env or {}), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(**SMALL)


def test_info_lists_metadata_and_tensors(model):
    out = llamanp("info", "--model", model)
    assert out.returncode == 0, out.stderr
    assert "general.architecture = 'llama'" in out.stdout
    assert "llama.embedding_length = 64" in out.stdout
    assert "blk.1.ffn_down.weight" in out.stdout and "64×128" in out.stdout


def test_tokenize_prints_ids_and_pieces(vocab_path):
    out = llamanp("tokenize", "--model", vocab_path, "Hello world 😊")
    assert out.returncode == 0, out.stderr
    ids = [int(line.split()[0]) for line in out.stdout.splitlines()]
    assert ids == Tokenizer.from_gguf(vocab_path).tokenize("Hello world 😊")
    assert "'▁Hello'" not in out.stdout and "b' Hello'" in out.stdout


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


def test_the_prompt_is_an_argument_or_an_option(model):
    as_argument = llamanp("generate", "--model", model, "Hello", "--sampler", "greedy", "-n", "4")
    as_option = llamanp("generate", "--model", model, "-p", "Hello", "--sampler", "greedy", "-n", "4")
    assert as_argument.returncode == 0, as_argument.stderr
    assert as_argument.stdout == as_option.stdout and as_argument.stdout.startswith("Hello")


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
    (["generate", "--model", "{model}", "x", "-p", "y"], "give the prompt once"),
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
