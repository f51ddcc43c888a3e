"""The exceptions llamanp raises on bad input: each subclasses a builtin so callers can catch broadly."""


class LlamaError(Exception):
    """Base class of every llamanp error."""


class GGUFError(LlamaError, ValueError):
    """A GGUF file is malformed, truncated or uses something we do not support."""


class ModelError(LlamaError, ValueError):
    """A model's architecture, hyperparameters or tensors are not what a LLaMA needs."""


class ContextOverflowError(LlamaError, ValueError):
    """Evaluating the tokens would run past the context window (n_ctx)."""


class GrammarError(LlamaError, ValueError):
    """A grammar or JSON schema cannot be parsed or is not supported."""


class TokenizerError(LlamaError, ValueError):
    """Text or token ids that the tokenizer cannot handle: lone surrogates, ids outside the vocabulary."""


class ArgumentError(LlamaError, ValueError):
    """An argument outside what the API accepts: a thread count, seed, context size or cache position."""


class PullError(LlamaError, OSError):
    """A named model cannot be downloaded or verified, is unknown, or is not pulled yet."""
