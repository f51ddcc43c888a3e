"""SentencePiece BPE, LLaMA's tokenizer, rebuilt from a GGUF vocabulary so that it
gives exactly the token ids llama.cpp gives.

The vocabulary (``tokenizer.ggml.tokens``) is a list of pieces of text in which a
space is written ``▁`` (U+2581), each with a score (``tokenizer.ggml.scores``,
higher merges first) and a type (``tokenizer.ggml.token_type``). Text becomes
tokens in four steps:

1. Special tokens: the text of control and unknown tokens (``<s>``, ``</s>``,
   ``<unk>``) is recognised only when ``special=True``; user-defined tokens
   always are. They cut the text into fragments of plain text between them.
2. Each plain fragment that starts the text or follows a special token gets one
   space in front (``tokenizer.ggml.add_space_prefix``, on for LLaMA), so that a
   word is tokenized the same at the start as after a space; then every space
   becomes ``▁``.
3. BPE: start from the fragment's characters and repeatedly join the adjacent
   pair whose concatenation is the highest-scoring token (leftmost pair on a
   tie), until no adjacent pair forms a token. A heap of candidate pairs makes
   this O(n log n); entries made stale by an earlier merge are skipped as
   they come off the heap.
4. Byte fallback: a character that never became a token (say an emoji outside
   the vocabulary) is written as its UTF-8 bytes, each the token ``<0xNN>``.

Decoding reverses it: each token's piece is its text with ``▁`` back to a space
(a byte token is its byte), and the leading space of the first piece is dropped,
the one that step 2 added.

The public vocabulary view is ``pieces``, every token's bytes, so the
vocabulary statistics are one-liners::

    longest = max(range(tok.n_vocab), key=lambda i: len(tok.pieces[i]))
    most_spaces = max(range(tok.n_vocab), key=lambda i: tok.pieces[i].count(b" "))

Where this follows llama.cpp rather than the sentencepiece library (llama.cpp
is the specification here): a ``▁`` in the input is a space; and ``untokenize``
drops the leading space of the first token even when that token is BOS and
prints as nothing, so ``untokenize([bos] + tokenize("Hi")) == " Hi"``.
Not carried over: llama.cpp's per-model-name tweaks (lstrip/rstrip of special
tokens for Phi-3 and a few BERTs, control types guessed from token text such as
``<|im_end|>``); they do not concern LLaMA/SentencePiece vocabularies.
"""
from __future__ import annotations

import codecs
import heapq
import os
import re
from collections.abc import Iterable
from enum import IntEnum
from functools import cached_property

from .arguments import check_token
from .errors import ModelError, TokenizerError
from .gguf import read_gguf

SPACE = "\u2581"  # ▁, how SentencePiece writes a space inside a token


class TokenType(IntEnum):
    """``tokenizer.ggml.token_type`` values (llama.cpp's llama_token_type)."""
    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


KNOWN_TYPES = frozenset(TokenType)
HIDDEN_UNLESS_SPECIAL = (TokenType.CONTROL, TokenType.UNKNOWN)
SPECIAL_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED)


class Tokenizer:
    """A SentencePiece-BPE vocabulary: text -> token ids -> text, as llama.cpp does it."""

    def __init__(self, tokens: list[str], scores: Iterable[float], types: Iterable[int], *,
                 bos: int | None, eos: int | None, unk: int | None,
                 add_bos: bool, add_eos: bool, add_space_prefix: bool):
        # llama.cpp renames empty entries so every token has a distinct, non-empty text
        self.tokens = [text or f"[EMPTY_{i}]" for i, text in enumerate(tokens)]
        self.scores = [float(s) for s in scores]
        self.token_types = [TokenType(t) if t in KNOWN_TYPES else TokenType.UNDEFINED for t in types]
        if not (len(self.tokens) == len(self.scores) == len(self.token_types)):
            raise ModelError(f"vocabulary has {len(self.tokens)} tokens but {len(self.scores)} "
                             f"scores and {len(self.token_types)} token types")
        self.ids = {text: i for i, text in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise ModelError("vocabulary has duplicate tokens")
        self.bos, self.eos, self.unk = bos, eos, unk
        self.add_bos, self.add_eos, self.add_space_prefix = add_bos, add_eos, add_space_prefix
        # longest first, so a special token containing another wins (ties: lower id first)
        self.special_tokens = sorted((i for i, t in enumerate(self.token_types) if t in SPECIAL_TYPES),
                                     key=lambda i: -len(self.tokens[i]))
        self.byte_tokens = [self.ids.get(f"<0x{b:02X}>", self.ids.get(chr(b)) if b < 0x80 else None)
                            for b in range(256)]
        self.words = word_pattern(self.tokens)

    @classmethod
    def from_metadata(cls, metadata: dict) -> Tokenizer:
        """Build from GGUF metadata (as engine.gguf.read_gguf returns it), with llama.cpp's defaults."""
        model = metadata.get("tokenizer.ggml.model")
        if model != "llama":
            raise ModelError(f"tokenizer model {model!r} is not supported: only SentencePiece ('llama')")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelError("GGUF metadata has no tokenizer.ggml.tokens list")
        n = len(tokens)
        scores = metadata.get("tokenizer.ggml.scores", [0.0] * n)
        types = metadata.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * n)
        for key, values in (("scores", scores), ("token_type", types)):
            if len(values) < n:
                raise ModelError(f"tokenizer.ggml.{key} has {len(values)} entries for {n} tokens")

        def special_id(key: str, default: int) -> int | None:
            """The id under ``key`` if it is in the vocabulary, else llama.cpp's default (if that is)."""
            value = metadata.get(f"tokenizer.ggml.{key}")
            if value is not None and 0 <= int(value) < n:
                return int(value)
            return default if default < n else None

        return cls(tokens, scores[:n], [int(t) for t in types[:n]],
                   bos=special_id("bos_token_id", 1), eos=special_id("eos_token_id", 2),
                   unk=special_id("unknown_token_id", 0),
                   add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
                   add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
                   add_space_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """Build from a GGUF file's vocabulary; tensor data is not read."""
        return cls.from_metadata(read_gguf(path).metadata)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @cached_property
    def pieces(self) -> list[bytes]:
        """Every token's bytes, special tokens spelled out (``pieces[1] == b"<s>"``), index = id."""
        return [self._piece(text, kind) for text, kind in zip(self.tokens, self.token_types)]

    @staticmethod
    def _piece(text: str, kind: TokenType) -> bytes:
        if kind == TokenType.NORMAL:
            return text.replace(SPACE, " ").encode()
        if kind == TokenType.BYTE:
            if not re.fullmatch("<0x[0-9A-Fa-f]{2}>", text):
                raise ModelError(f"byte token {text!r} is not written <0xNN>")
            return bytes([int(text[3:5], 16)])
        if kind in SPECIAL_TYPES:
            return text.encode()
        return b""  # unused and undefined tokens print as nothing

    # ---- text -> ids ------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text``.

        add_bos: add the special tokens the model asks for, like llama.cpp's ``add_special``:
            BOS first if ``tokenizer.ggml.add_bos_token`` (true for LLaMA), EOS last if
            ``tokenizer.ggml.add_eos_token``.
        special: recognise control tokens written in the text (``"<s>"`` -> BOS id).
        """
        check_text(text)
        ids = []
        if add_bos and self.add_bos:
            ids.append(self._required(self.bos, "BOS"))
        after_special = True  # the start of the text counts as following a special token
        for fragment in self._split_special(text, special):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
                continue
            if self.add_space_prefix and after_special:
                fragment = " " + fragment
            ids += self._bpe_fragment(fragment.replace(" ", SPACE))
            after_special = False
        if add_bos and self.add_eos:
            ids.append(self._required(self.eos, "EOS"))
        return ids

    def _required(self, token: int | None, name: str) -> int:
        if token is None:
            raise ModelError(f"the model asks for a {name} token but its vocabulary has none")
        return token

    def _split_special(self, text: str, special: bool) -> list[str | int]:
        """``text`` cut at every special token: plain strings between special token ids."""
        fragments: list[str | int] = [text] if text else []
        for token in self.special_tokens:
            if not special and self.token_types[token] in HIDDEN_UNLESS_SPECIAL:
                continue
            needle = self.tokens[token]
            cut = []
            for fragment in fragments:
                if isinstance(fragment, int) or needle not in fragment:
                    cut.append(fragment)
                    continue
                for i, part in enumerate(fragment.split(needle)):
                    if i:
                        cut.append(token)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def _bpe_fragment(self, text: str) -> list[int]:
        """BPE over one escaped fragment, word by word (the same result, with repeats merged once)."""
        ids: list[int] = []
        seen: dict[str, list[int]] = {}
        for word in self.words.findall(text):
            word_ids = seen.get(word)
            if word_ids is None:
                word_ids = seen[word] = self._bpe(word)
            ids += word_ids
        return ids

    def _bpe(self, text: str) -> list[int]:
        """Merge the characters of ``text`` by score, then write the leftovers as byte tokens."""
        # symbol i starts at character i; piece[i] is its text ('' once merged into its left neighbour)
        piece = list(text)
        n = len(piece)
        prev = list(range(-1, n - 1))
        next_ = list(range(1, n + 1))
        next_[-1] = -1
        heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged length)
        vocab, scores = self.ids, self.scores

        def add_pair(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = piece[left] + piece[right]
            token = vocab.get(merged)
            if token is not None:
                heapq.heappush(heap, (-scores[token], left, right, len(merged)))

        for i in range(1, n):
            add_pair(i - 1, i)
        while heap:
            _, left, right, length = heapq.heappop(heap)
            if not piece[left] or not piece[right] or len(piece[left]) + len(piece[right]) != length:
                continue  # one side changed since this pair was queued
            piece[left] += piece[right]
            piece[right] = ""
            next_[left] = next_[right]
            if next_[left] >= 0:
                prev[next_[left]] = left
            add_pair(prev[left], left)
            add_pair(left, next_[left])

        ids = []
        i = 0
        while i >= 0:
            token = self.ids.get(piece[i])
            ids += [token] if token is not None else [self._byte_token(b) for b in piece[i].encode()]
            i = next_[i]
        return ids

    def _byte_token(self, byte: int) -> int:
        token = self.byte_tokens[byte]
        if token is None:
            raise ModelError(f"vocabulary has no byte-fallback token <0x{byte:02X}>")
        return token

    # ---- ids -> text ------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes token ``token`` stands for; control and unknown tokens are b'' unless ``special``."""
        token = check_token(token, self.n_vocab)
        if not special and self.token_types[token] in HIDDEN_UNLESS_SPECIAL:
            return b""
        return self.pieces[token]

    def untokenize(self, tokens: Iterable[int], special: bool = False) -> str:
        """The text of ``tokens`` (llama.cpp's llama_detokenize), invalid UTF-8 as U+FFFD.

        The first token loses one leading space when the vocabulary adds a space
        prefix, so ``untokenize(tokenize(s)) == s``.
        """
        decoder = StreamDecoder(self, special=special)
        return "".join([decoder.feed(token) for token in tokens]) + decoder.flush()


class StreamDecoder:
    """Text of token ids fed one at a time, released only as whole UTF-8 characters.

    ``"".join(feed(t) for t in ids) + flush() == tokenizer.untokenize(ids)``.
    at_start: the ids begin the text, so the first one loses its leading space
    as in untokenize; pass False to continue after text already shown (generation
    after a prompt), where every space is real.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False, at_start: bool = True):
        self.tokenizer = tokenizer
        self.special = special
        self.strip_space = at_start and tokenizer.add_space_prefix
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        """The characters that ``token`` completes ('' while one is still partial)."""
        piece = self.tokenizer.token_to_piece(token, self.special)
        if self.strip_space and piece.startswith(b" "):
            piece = piece[1:]
        self.strip_space = False
        return self.utf8.decode(piece)

    def flush(self) -> str:
        """Whatever bytes are left at the end, an incomplete character as U+FFFD."""
        return self.utf8.decode(b"", final=True)


def word_pattern(tokens: list[str]) -> re.Pattern:
    """A regex for the words of escaped text: pieces that no BPE merge can join.

    A character that is in no multi-character token never merges with a
    neighbour, so it is a word of its own; and when no token has ▁ after another
    character, a ▁ that follows another character starts a new word.
    """
    joinable = {c for text in tokens if len(text) > 1 for c in text}
    letters = "".join(re.escape(c) for c in sorted(joinable - {SPACE}))
    letter = f"[{letters}]" if letters else r"[^\s\S]"
    if any(re.search(f"[^{SPACE}]{SPACE}", text) for text in tokens):
        return re.compile(f"(?:{SPACE}|{letter})+|.", re.DOTALL)
    return re.compile(f"{SPACE}+{letter}*|{letter}+|.", re.DOTALL)


def check_text(text: str) -> None:
    """Reject what cannot be tokenized: non-strings, and strings that are not valid Unicode."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(f"text has a lone surrogate U+{ord(text[e.start]):04X} at index {e.start}; "
                             "it is not valid Unicode and has no UTF-8 bytes") from None
