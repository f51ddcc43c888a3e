"""Byte-level BPE (``tokenizer.ggml.model == "gpt2"``): GPT-2, Llama 3, Qwen2, SmolLM and kin.

Text becomes tokens in three steps, after the special tokens are cut out
(engine.tokenizer does that for both kinds of vocabulary):

1. Pre-tokenize: cut the text into words with the regexes of the vocabulary's
   ``tokenizer.ggml.pre`` (engine.pretokenize). BPE never merges across words.
2. Byte-encode: write each word's UTF-8 bytes as printable characters, one per
   byte, with GPT-2's byte map (printable Latin-1 bytes stand for themselves,
   the other 68 bytes for U+0100 onwards), the alphabet the vocabulary is in.
3. Merge: start from the word's characters and repeatedly join the adjacent pair
   that comes first in ``tokenizer.ggml.merges`` (leftmost on a tie) until no
   pair is a merge; each symbol left is a token. For the Llama 3 and GLM-4 families a word
   that is a token as a whole is that token, merges unused (llama.cpp's
   ``ignore_merges``).

Each distinct word of a text is merged once. Decoding maps a piece's characters
back to bytes through the byte map.
"""
from __future__ import annotations

from .pair_merge import encode_words, merge_pairs
from .pretokenize import IGNORE_MERGES, pre_tokenizer

# GPT-2's byte map: bytes that print as themselves keep their code point, the rest
# (controls, space, DEL, NBSP, soft hyphen...) take U+0100, U+0101, ... in byte order
_SELF = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
_OTHERS = [b for b in range(256) if b not in _SELF]
BYTE_CHARS = "".join(chr(b) if b in _SELF else chr(0x100 + _OTHERS.index(b)) for b in range(256))
BYTE_OF_CHAR = {char: byte for byte, char in enumerate(BYTE_CHARS)}
LATIN1_TO_BYTE_CHARS = str.maketrans(dict(enumerate(BYTE_CHARS)))


def byte_encode(text: str) -> str:
    """``text``'s UTF-8 bytes written in GPT-2's byte alphabet."""
    return text.encode("utf-8").decode("latin-1").translate(LATIN1_TO_BYTE_CHARS)


def byte_decode(text: str) -> bytes:
    """The bytes a byte-alphabet token text stands for.

    A character outside the byte alphabet is written as llama.cpp writes it:
    ``[UNK_BYTE_0x`` + its UTF-8 in hex + the whole text + ``]``.
    """
    out = bytearray()
    for char in text:
        byte = BYTE_OF_CHAR.get(char)
        if byte is None:
            out += f"[UNK_BYTE_0x{char.encode().hex()}{text}]".encode()
        else:
            out.append(byte)
    return bytes(out)


class ByteLevelBPE:
    """Text fragments (no special tokens in them) to token ids, with a vocabulary's merges."""

    def __init__(self, ids: dict[str, int], merges: list[str], pre: str):
        self.ids = ids
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            left, space, right = merge[1:].partition(" ")   # the first space after the first character
            if space:
                self.ranks.setdefault((merge[0] + left, right), rank)
        self.words = pre_tokenizer(pre)
        self.whole_words = pre in IGNORE_MERGES

    def encode(self, text: str, after_special: bool = False) -> list[int]:
        """Token ids of a fragment of plain text (``after_special`` does not matter: no space prefix here)."""
        return encode_words(self.words(text), self._encode_word)

    def _encode_word(self, word: str) -> list[int]:
        encoded = byte_encode(word)
        if self.whole_words and encoded in self.ids:
            return [self.ids[encoded]]
        ids = []
        for symbol in merge_pairs(list(encoded), self.ranks):
            token = self.ids.get(symbol)
            if token is not None:
                ids.append(token)
            else:  # as llama.cpp: each byte of the symbol's text that is a token by itself, the rest dropped
                ids += [self.ids[chr(b)] for b in symbol.encode() if b < 0x80 and chr(b) in self.ids]
        return ids

    @staticmethod
    def piece(text: str) -> bytes:
        """The bytes of a normal token."""
        return byte_decode(text)

    def byte_token(self, byte: int) -> int | None:
        """The token that is exactly ``byte``, if any."""
        return self.ids.get(BYTE_CHARS[byte])
