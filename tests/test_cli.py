"""The llamanp command line, run as a user runs it: a subprocess, stdout, stderr and exit status."""
import collections
import math
import re

import llama_cpp
import numpy as np
import pytest

import engine.__main__ as engine_main
from engine import Llama, cli
from engine.cli import main
from engine.sampling import greedy
from tests import gguf_mutations as mutations
from tests.helpers import llamanp
from tests.llama_cpp_vocab import LlamaCppVocab

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=64)


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(**SMALL)


def test_info_lists_metadata_and_tensors(model):
    out = llamanp("info", "--model", model)
    assert out.returncode == 0, out.stderr
    assert "general.architecture = 'llama'" in out.stdout
    assert "llama.embedding_length = 64" in out.stdout
    assert "blk.1.ffn_down.weight" in out.stdout and "64×128" in out.stdout
    assert "family llama: norm rope (base 10000), silu gate, head size 16\n" in out.stdout


def test_info_names_the_family_and_its_switches(make_model):
    out = llamanp("info", "--model", make_model(arch="gemma3", dim=64, n_layers=7, head_dim=32, window=16))
    assert out.returncode == 0, out.stderr
    assert ("family gemma3: neox rope (base 10000), gelu gate, head size 32, q/k norm, post-attention and "
            "post-ffn norms, embeddings x sqrt(dim), q x attention scale, sliding window 16 on 6 of 7 layers "
            "(rope base 10000)") in out.stdout


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


# ---- failures end in one line, in this process (main(argv) as the console script runs it) ----------------

def run_main(argv, capsys) -> tuple[int, str]:
    """``main(argv)``'s exit status and stderr as the interpreter would leave them."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # sys.exit(message): the interpreter prints it and exits with status 1
        return 1, err + code + "\n"
    return code or 0, err


def assert_one_line(err: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def not_utf8(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "latin1.txt"
    path.write_bytes("café au lait, crème brûlée\n".encode("latin-1") * 50)
    return path


@pytest.mark.parametrize("args, status, message", [
    (["top", "-k", "0", "x"], 2, "argument -k: must be at least 1, got 0"),
    (["top", "-k", "many", "x"], 2, "argument -k: invalid count value: 'many'"),
    (["perplexity", "--file", "{text}", "--chunks", "-1"], 2, "argument --chunks: must be at least 1"),
    (["bench", "--n-prompt", "0"], 2, "argument --n-prompt: must be at least 1"),
    (["bench", "--n-gen", "-2"], 2, "argument --n-gen: must be at least 1"),
    (["generate", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["perplexity", "--file", "{text}"], 1, "not UTF-8 text (invalid continuation byte at byte 3)"),
    (["generate", "-p", "x", "--grammar", "{text}"], 1, "not UTF-8 text"),
    (["generate", "-p", "x", "--ctx", "0"], 1, "n_ctx must be an integer from 1"),
    (["info", "--model", "{text}"], 1, "not a GGUF file"),
])
def test_bad_arguments_end_in_one_line(args, status, message, not_utf8, capsys):
    code, err = run_main([a.format(text=not_utf8) for a in args], capsys)
    assert code == status and message in err
    assert_one_line(err)


def test_a_bug_ends_in_one_line_too(monkeypatch, capsys):
    """An exception that is not the user's still ends in one line, named as a bug."""
    def broken(args):
        raise TypeError("unexpected")
    monkeypatch.setattr(cli, "cmd_info", broken)
    code, err = run_main(["info"], capsys)
    assert code == 1 and "internal error" in err and "TypeError: unexpected" in err
    assert_one_line(err)


def test_ctrl_c_ends_in_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as exit:
        engine_main.run()
    assert exit.value.code == 130 and capsys.readouterr().err == "llamanp: interrupted\n"


@pytest.fixture(scope="module")
def mutated(tmp_path_factory):
    """The fuzz test's base model and a directory for the inputs made from it."""
    directory = tmp_path_factory.mktemp("mutated")
    return mutations.Doc.read(mutations.write_base_model(directory / "base.gguf")), directory


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # garbage weights overflow
@pytest.mark.parametrize("command", [["info"], ["tokenize", "Hi the"], ["top", "-k", "2", "Hi"],
                                     ["generate", "-p", "Hi", "-n", "2", "--sampler", "greedy"]])
def test_corrupt_models_end_in_one_line(command, mutated, capsys):
    """Inputs of every fuzz family: each command either succeeds or fails in one line as the user's error."""
    base, directory = mutated
    outcomes = collections.Counter()
    for seed in range(150):
        _, blob = mutations.mutate(base, seed)
        path = mutations.write_case(directory, blob)
        code, err = run_main([command[0], "--model", path, *command[1:]], capsys)
        outcomes[code] += 1
        if code:
            assert code == 1 and err.startswith("llamanp: error:"), f"seed {seed}: {err}"
            assert_one_line(err)
    assert outcomes[0] and outcomes[1]  # both sides reached
