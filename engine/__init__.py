"""llamanp: LLaMA inference in NumPy (and Cython), with logits faithful to llama.cpp."""
from pathlib import Path

from .errors import ArgumentError, ContextOverflowError, GGUFError, GrammarError, LlamaError, ModelError

DEFAULT_MODEL = Path(__file__).parent / "data" / "tiny-shakespeare.gguf"
"""The tiny Shakespeare model that ships with the package (see data/MODEL_CARD.md)."""


def __getattr__(name: str):
    """``Llama`` and ``LlamaState`` on first use: importing ``engine`` stays light (no NumPy), so the
    command line is ready for Ctrl-C before the heavy imports start."""
    if name in ("Llama", "LlamaState"):
        from . import llama
        return getattr(llama, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "Llama",
    "LlamaState",
    "LlamaError",
    "ArgumentError",
    "GGUFError",
    "ModelError",
    "ContextOverflowError",
    "GrammarError",
]
