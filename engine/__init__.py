"""llamanp: LLaMA inference in NumPy (and Cython), with logits faithful to llama.cpp."""
from .errors import ContextOverflowError, GGUFError, GrammarError, LlamaError, ModelError
from .llama import Llama, LlamaState

__all__ = [
    "Llama",
    "LlamaState",
    "LlamaError",
    "GGUFError",
    "ModelError",
    "ContextOverflowError",
    "GrammarError",
]
