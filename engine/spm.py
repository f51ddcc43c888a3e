"""SentencePiece BPE (``tokenizer.ggml.model == "llama"``), LLaMA's tokenizer, as llama.cpp runs it.

The vocabulary is a list of pieces of text in which a space is written ``▁``
(U+2581), each with a score (``tokenizer.ggml.scores``, higher merges first).
A fragment of plain text (special tokens already cut out) becomes tokens in
three steps:

1. A fragment that starts the text or follows a special token gets one space in
   front (``tokenizer.ggml.add_space_prefix``, on for LLaMA), so that a word is
   tokenized the same at the start as after a space; then every space becomes ``▁``.
2. BPE: start from the fragment's characters and repeatedly join the adjacent
   pair whose concatenation is the highest-scoring token (leftmost pair on a
   tie), until no adjacent pair forms a token.
3. Byte fallback: a character that never became a token (say an emoji outside
   the vocabulary) is written as its UTF-8 bytes, each the token ``<0xNN>``.

Where this follows llama.cpp rather than the sentencepiece library (llama.cpp is
the specification here): a ``▁`` in the input is a space.
"""
from __future__ import annotations

import re

from .errors import ModelError
from .pair_merge import encode_words, merge_pairs

SPACE = "\u2581"  # ▁, how SentencePiece writes a space inside a token


class SentencePiece:
    """Text fragments (no special tokens in them) to token ids, by token scores."""

    def __init__(self, ids: dict[str, int], scores: list[float], add_space_prefix: bool):
        self.ids = ids
        # every way to write a token as two parts -> minus its score: the pairs that merge, best first
        self.priority = {(text[:k], text[k:]): -scores[i] for text, i in ids.items() for k in range(1, len(text))}
        self.add_space_prefix = add_space_prefix
        self.byte_tokens = [ids.get(f"<0x{b:02X}>", ids.get(chr(b)) if b < 0x80 else None) for b in range(256)]
        self.words = word_pattern(list(ids))

    def encode(self, text: str, after_special: bool) -> list[int]:
        """Token ids of a fragment; ``after_special``: it starts the text or follows a special token."""
        if self.add_space_prefix and after_special:
            text = " " + text
        return encode_words(self.words.findall(text.replace(" ", SPACE)), self._encode_word)

    def _encode_word(self, word: str) -> list[int]:
        out = []
        for symbol in merge_pairs(list(word), self.priority):
            token = self.ids.get(symbol)
            out += [token] if token is not None else [self._byte_token(b) for b in symbol.encode()]
        return out

    def _byte_token(self, byte: int) -> int:
        token = self.byte_tokens[byte]
        if token is None:
            raise ModelError(f"vocabulary has no byte-fallback token <0x{byte:02X}>")
        return token

    @staticmethod
    def piece(text: str) -> bytes:
        """The bytes of a normal token: its text with ``▁`` back to a space."""
        return text.replace(SPACE, " ").encode()

    def byte_token(self, byte: int) -> int | None:
        """The token that is exactly ``byte``, if any (``<0xNN>``, or the ASCII character)."""
        return self.byte_tokens[byte]


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
