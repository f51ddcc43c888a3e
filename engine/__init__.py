"""llamanp: LLaMA inference in NumPy (and Cython), with logits faithful to llama.cpp."""
from pathlib import Path

from .errors import ArgumentError, ContextOverflowError, GGUFError, GrammarError, LlamaError, ModelError
from .llama import Llama, LlamaState

DEFAULT_MODEL = Path(__file__).parent / "data" / "tiny-shakespeare.gguf"
"""The tiny Shakespeare model that ships with the package (see data/MODEL_CARD.md)."""

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
