"""A GGUF vocabulary as llama.cpp reads it: text -> token ids -> text, for both kinds of vocabulary.

``tokenizer.ggml.model`` picks how plain text becomes tokens: ``"llama"`` is
SentencePiece BPE (engine.spm, LLaMA 1/2, Mistral, Phi-3), ``"gpt2"`` byte-level
BPE (engine.bpe, GPT-2, Llama 3, Qwen2, SmolLM...). Everything else is shared
and lives here:

- Special tokens: the text of control and unknown tokens (``<s>``,
  ``<|im_end|>``...) is recognised only when ``special=True``; user-defined
  tokens always are. Longest first, they cut the text into fragments of plain
  text between them, which the vocabulary's algorithm then tokenizes.
- Token types as llama.cpp settles them at load (``tokenizer.ggml.token_type``
  then its fix-ups by token text: end-of-turn and fill-in-the-middle tokens such
  as ``<|im_end|>`` or ``<|fim_prefix|>`` become control tokens even when the
  GGUF calls them normal), and the end-of-generation set ``eog`` it derives
  (EOS, EOT, EOM, the FIM pad/repo/separator tokens and the tokens it knows by
  text: ``<|eot_id|>``, ``<|im_end|>``, ``<|endoftext|>``, ``<end_of_turn>``...).
- Decoding: a token's piece is its bytes; control and unknown tokens print as
  nothing unless ``special``; a SentencePiece text drops the leading space that
  the space prefix added. ``untokenize`` is the concatenation of pieces
  (llama.cpp's ``llama_token_to_piece``), which round-trips; llama.cpp's
  ``llama_detokenize`` additionally removes spaces before punctuation for some
  byte-level vocabularies (Hugging Face's clean_up_tokenization_spaces), which
  does not, and is not done here.

The public vocabulary view is ``pieces``, every token's bytes, so vocabulary
statistics are one-liners::

    longest = max(range(tok.n_vocab), key=lambda i: len(tok.pieces[i]))

Where this follows llama.cpp rather than the reference libraries (llama.cpp is
the specification): ``untokenize`` drops the leading space of the first token
even when that token is BOS and prints as nothing, so
``untokenize([bos] + tokenize("Hi")) == " Hi"`` for LLaMA.
"""
from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable
from enum import IntEnum
from functools import cached_property

import numpy as np
import regex

from .arguments import check_token
from .bpe import ByteLevelBPE
from .errors import ModelError, TokenizerError
from .gguf import read_gguf
from .pretokenize import ADD_BOS, NO_BOS
from .spm import SPACE, SentencePiece


class TokenType(IntEnum):
    """``tokenizer.ggml.token_type`` values (llama.cpp's llama_token_type)."""
    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


TYPE_OF = {int(t): t for t in TokenType}
HIDDEN_UNLESS_SPECIAL = (TokenType.CONTROL, TokenType.UNKNOWN)
SPECIAL_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED)
C_SPACES = " \t\n\v\f\r"  # what C's isspace() calls white space: lstrip/rstrip remove these

# Tokens llama.cpp recognises by their text at load (llama_vocab::impl::load), as facts of its behaviour:
# fill-in-the-middle tokens, when the GGUF names none (each becomes a control token; pad/repo/separator end generation)
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# end-of-generation tokens, always (each becomes a control token); these include every text llama.cpp
# would take as EOT or EOM when the GGUF names none
EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
])
USER_DEFINED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss: always user-defined


class SpecialTokenIndex:
    """Which special tokens a text contains, found in one pass over it.

    A regex alternation of the special texts, longest first, run at every
    position (``overlapped``) gives the longest special text starting there; the
    special texts that start there are that one's prefixes among them.
    """

    def __init__(self, texts: dict[int, str]):
        """texts: id -> text of each special token, in the order tokens are to be tried."""
        ids = {text: token for token, text in texts.items()}
        self.order = {token: rank for rank, token in enumerate(texts)}
        self.first_chars = frozenset(text[0] for text in ids)
        self.pattern = regex.compile("|".join(map(regex.escape, sorted(ids, key=len, reverse=True))))
        self.prefixes = {text: [ids[text[:k]] for k in range(1, len(text) + 1) if text[:k] in ids] for text in ids}

    def within(self, text: str) -> list[int]:
        """The special tokens that occur in ``text``, in the order given."""
        if self.first_chars.isdisjoint(text):
            return []
        longest = {m.group() for m in self.pattern.finditer(text, overlapped=True)}
        found = {token for match in longest for token in self.prefixes[match]}
        return sorted(found, key=self.order.__getitem__)


class Tokenizer:
    """A GGUF vocabulary: text -> token ids -> text, as llama.cpp does it."""

    def __init__(self, tokens: list[str], token_types: list[TokenType], encoder: SentencePiece | ByteLevelBPE, *,
                 bos: int | None, eos: int | None, add_bos: bool, add_eos: bool, eog: Iterable[int] = (),
                 lstrip: Iterable[int] = (), rstrip: Iterable[int] = ()):
        """tokens: every token's text, index = id, distinct; token_types: their types as llama.cpp
        settles them; encoder: the algorithm for plain text; eog: the end-of-generation ids;
        lstrip, rstrip: special tokens that swallow the white space before, after them."""
        self.tokens = tokens
        self.token_types = token_types
        self.ids = encoder.ids
        self.encoder = encoder
        self.bos, self.eos = bos, eos
        self.add_bos, self.add_eos = add_bos, add_eos
        self.add_space_prefix = getattr(encoder, "add_space_prefix", False)
        self.eog = frozenset(eog)
        self.lstrip, self.rstrip = frozenset(lstrip), frozenset(rstrip)
        # longest UTF-8 first, as llama.cpp orders them, so a special token containing another wins
        # (ties: lower id first)
        self.special_tokens = sorted((i for i, t in enumerate(token_types) if t in SPECIAL_TYPES),
                                     key=lambda i: -len(tokens[i].encode()))
        self.special_index = SpecialTokenIndex({i: tokens[i] for i in self.special_tokens})
        self.byte_tokens = [encoder.byte_token(b) for b in range(256)]

    @classmethod
    def from_metadata(cls, metadata: dict) -> Tokenizer:
        """Build from GGUF metadata (as engine.gguf.read_gguf returns it), with llama.cpp's defaults."""
        return _VocabularyReader(metadata).tokenizer()

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

    def _piece(self, text: str, kind: TokenType) -> bytes:
        if kind in SPECIAL_TYPES:
            return text.encode()
        if kind == TokenType.NORMAL:
            return self.encoder.piece(text)
        if kind == TokenType.BYTE:
            if not re.fullmatch("<0x[0-9A-Fa-f]{2}>", text):
                raise ModelError(f"byte token {text!r} is not written <0xNN>")
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens print as nothing

    # ---- text -> ids ------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text``.

        add_bos: add the special tokens the model asks for, like llama.cpp's ``add_special``:
            BOS first if ``tokenizer.ggml.add_bos_token`` (true for LLaMA and Llama 3), EOS last
            if ``tokenizer.ggml.add_eos_token``.
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
            else:
                ids += self.encoder.encode(fragment, after_special)
                after_special = False
        if add_bos and self.add_eos:
            ids.append(self._required(self.eos, "EOS"))
        return ids

    def _required(self, token: int | None, name: str) -> int:
        if token is None:
            raise ModelError(f"the model asks for a {name} token but its vocabulary has none")
        return token

    def _split_special(self, text: str, special: bool) -> list[str | int]:
        """``text`` cut at every special token: plain strings between special token ids.

        As llama.cpp: one special token at a time, longest first, each cutting every
        plain fragment left at each of its occurrences (left to right); only the
        special tokens that occur in ``text`` at all are tried.
        """
        fragments: list[str | int] = [text] if text else []
        for token in self.special_index.within(text):
            if not special and self.token_types[token] in HIDDEN_UNLESS_SPECIAL:
                continue
            needle = self.tokens[token]
            cut = []
            for fragment in fragments:
                if isinstance(fragment, int) or needle not in fragment:
                    cut.append(fragment)
                    continue
                start = 0
                while (match := fragment.find(needle, start)) >= 0:
                    left = fragment[start:match]
                    cut += [left.rstrip(C_SPACES) if token in self.lstrip else left, token]
                    start = match + len(needle)
                    if token in self.rstrip:
                        start = len(fragment) - len(fragment[start:].lstrip(C_SPACES))
                cut.append(fragment[start:])
            fragments = [f for f in cut if f != ""]
        return fragments

    # ---- ids -> text ------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes token ``token`` stands for; control and unknown tokens are b'' unless ``special``."""
        token = check_token(token, self.n_vocab)
        if not special and self.token_types[token] in HIDDEN_UNLESS_SPECIAL:
            return b""
        return self.pieces[token]

    def untokenize(self, tokens: Iterable[int], special: bool = False) -> str:
        """The text of ``tokens``, invalid UTF-8 as U+FFFD.

        With a space prefix (SentencePiece) the first token loses one leading space,
        so ``untokenize(tokenize(s)) == s``.
        """
        decoder = StreamDecoder(self, special=special)
        return "".join([decoder.feed(token) for token in tokens]) + decoder.flush()


class StreamDecoder:
    """Text of token ids fed one at a time, released only as whole UTF-8 characters.

    ``"".join(feed(t) for t in ids) + flush() == tokenizer.untokenize(ids)``.
    at_start: the ids begin the text, so the first one loses its leading space
    as in untokenize (SentencePiece only); pass False to continue after text
    already shown (generation after a prompt), where every space is real.
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


class _VocabularyReader:
    """The tokenizer keys of GGUF metadata, each checked for type and range where it is read."""

    def __init__(self, metadata: dict):
        self.metadata = metadata

    def tokenizer(self) -> Tokenizer:
        model = self.string("tokenizer.ggml.model")
        if model not in ("llama", "gpt2"):
            raise ModelError(f"tokenizer model {model!r} is not supported: "
                             "only SentencePiece ('llama') and byte-level BPE ('gpt2')")
        pre = self.string("tokenizer.ggml.pre") or ""
        tokens = self.tokens()
        n = len(tokens)
        types = self.token_types(n)
        ids = {text: i for i, text in enumerate(tokens)}
        if len(ids) != n:
            raise ModelError("vocabulary has duplicate tokens")
        if model == "llama":
            encoder = SentencePiece(ids, self.scores(n), self.flag("add_space_prefix", True))
            defaults = {"bos": 1, "eos": 2}
            add_bos = True
        else:
            pre = pre or "default"  # absent or empty: llama.cpp's default
            encoder = ByteLevelBPE(ids, self.merges(), pre)
            defaults = {"bos": None if pre in NO_BOS else 11, "eos": 11}
            add_bos = pre in ADD_BOS
        special = {name: self.token_id(f"{name}_token_id", defaults.get(name), n)
                   for name in ("bos", "eos", "eot", "eom", *FIM_TEXTS)}
        for name, legacy in (("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle")):
            special[name] = self.token_id(f"{legacy}_token_id", special[name], n)
        eog = _settle_types(tokens, ids, types, special)
        lstrip, rstrip = self.strip_rules(ids, types, pre)
        return Tokenizer(tokens, types, encoder, bos=special["bos"], eos=special["eos"],
                         add_bos=self.flag("add_bos_token", add_bos), add_eos=self.flag("add_eos_token", False),
                         eog=eog, lstrip=lstrip, rstrip=rstrip)

    def strip_rules(self, ids: dict[str, int], types: list[TokenType], pre: str) -> tuple[set[int], set[int]]:
        """The special tokens that swallow the white space before them and after them: llama.cpp
        sets these by model name, tokenizer.ggml.pre and architecture, whichever rule comes first."""
        name = (self.string("general.name") or "").encode().lower().decode()  # ASCII lower case, as C's tolower
        arch = self.string("general.architecture") or ""
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            return {ids[t] for t in ["<mask>"] if t in ids}, set()
        if "phi-3" in name or "phi3" in name:
            rstrip = {i for i, t in enumerate(types) if t in SPECIAL_TYPES} | {ids[t] for t in ["</s>"] if t in ids}
            return set(), rstrip - {ids[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in ids}
        if "modern-bert" in name:
            return {ids[t] for t in ["[MASK]"] if t in ids}, set()
        return set(), set()

    def _wrong(self, key: str, what: str):
        return ModelError(f"{key} must be {what}, got {type(self.metadata[key]).__name__}")

    def string(self, key: str) -> str | None:
        value = self.metadata.get(key)
        if value is not None and not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def flag(self, name: str, default: bool) -> bool:
        key = f"tokenizer.ggml.{name}"
        value = self.metadata.get(key)
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise self._wrong(key, "a boolean")
        return default if value is None else bool(value)

    def token_id(self, name: str, default: int | None, n: int) -> int | None:
        """The id under tokenizer.ggml.``name`` if it is in the vocabulary, else llama.cpp's default (if that is)."""
        key = f"tokenizer.ggml.{name}"
        value = self.metadata.get(key)
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_))):
            raise self._wrong(key, "an integer token id")
        if value is not None and 0 <= value < n:
            return int(value)
        return default if default is not None and default < n else None

    def tokens(self) -> list[str]:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens:
            raise ModelError("GGUF metadata has no tokenizer.ggml.tokens list")
        if not all(isinstance(text, str) for text in tokens):
            raise ModelError("tokenizer.ggml.tokens must be a list of strings")
        # llama.cpp renames empty entries so every token has a distinct, non-empty text
        return [text or f"[EMPTY_{i}]" for i, text in enumerate(tokens)]

    def numbers(self, name: str, n: int, integers: bool) -> list | None:
        """tokenizer.ggml.``name``: a 1-D array of at least ``n`` numbers (integers only if
        ``integers``), its first n as a list; None when the key is absent."""
        key = f"tokenizer.ggml.{name}"
        values = self.metadata.get(key)
        if values is None:
            return None
        kinds, types = ("iu", (int, np.integer)) if integers else ("iuf", (int, float, np.integer, np.floating))
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in kinds:
            values = values.tolist()
        elif not (isinstance(values, list)
                  and all(isinstance(v, types) and not isinstance(v, (bool, np.bool_)) for v in values)):
            raise ModelError(f"{key} must be an array of {'integers' if integers else 'numbers'}")
        if len(values) < n:
            raise ModelError(f"{key} has {len(values)} entries for {n} tokens")
        return values[:n]

    def scores(self, n: int) -> list[float]:
        scores = self.numbers("scores", n, integers=False)
        try:
            return [0.0] * n if scores is None else [float(s) for s in scores]
        except OverflowError:
            raise ModelError("tokenizer.ggml.scores has a number too large for a float") from None

    def token_types(self, n: int) -> list[TokenType]:
        types = self.numbers("token_type", n, integers=True)
        if types is None:
            return [TokenType.NORMAL] * n
        return [TYPE_OF.get(t, TokenType.UNDEFINED) for t in types]

    def merges(self) -> list[str]:
        merges = self.metadata.get("tokenizer.ggml.merges")
        if merges is None:
            raise ModelError("a gpt2 (byte-level BPE) vocabulary needs tokenizer.ggml.merges; the GGUF has none")
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise ModelError("tokenizer.ggml.merges must be a list of strings")
        bad = next((m for m in merges if " " not in m[1:]), None)
        if bad is not None:
            raise ModelError(f"tokenizer.ggml.merges has {bad!r}, not two symbols joined by a space")
        return merges


def _settle_types(tokens: list[str], ids: dict[str, int], types: list[TokenType],
                  special: dict[str, int | None]) -> set[int]:
    """Apply llama.cpp's load-time fix-ups to ``types`` (in place) and return the end-of-generation ids.

    ``special`` maps bos/eos/eot/eom/fim_* to the ids the GGUF gave; FIM tokens it
    left out are looked up by text.
    """
    for name, texts in FIM_TEXTS.items():
        if special[name] is None:
            special[name] = next((ids[text] for text in texts if text in ids), None)
            if special[name] is not None:
                types[special[name]] = TokenType.CONTROL
    eog = {ids[text] for text in EOG_TEXTS if text in ids}
    for token in eog:
        types[token] = TokenType.CONTROL
    for text in USER_DEFINED_TEXTS:
        if text in ids:
            types[ids[text]] = TokenType.USER_DEFINED
    eog |= {special[name] for name in ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")} - {None}
    present = {tokens[i] for i in eog}
    calls = bool(present & {"<|call|>", "<|calls|>"})
    if "<|end|>" in present and calls and ("<|return|>" in present or "<|flush|>" in present):
        eog.discard(ids["<|end|>"])  # gpt-oss style: <|end|> ends a message, not the generation
        types[ids["<|end|>"]] = TokenType.USER_DEFINED
    if "</s>" in present and present & {"<|tool_response>", "<|plamo:eos|>"}:
        eog.discard(ids["</s>"])
        types[ids["</s>"]] = TokenType.NORMAL
    return eog


ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def readable(piece: bytes) -> str:
    """A token's bytes written for people to read: its characters as they are, but
    ``\\n``, ``\\t``, ``\\r``, a doubled backslash, ``\\uXXXX`` for other invisible
    characters, and ``\\xNN`` for each byte that is not part of a whole UTF-8 character
    in the piece (a byte-level token may hold part of one, as may an ``<0xNN>`` token)."""
    out = []
    for char in piece.decode("utf-8", errors="surrogateescape"):  # a stray byte b -> U+DC00 + b
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in ESCAPES:
            out.append(ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def check_text(text: str) -> None:
    """Reject what cannot be tokenized: non-strings, and strings that are not valid Unicode."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(f"text has a lone surrogate U+{ord(text[e.start]):04X} at index {e.start}; "
                             "it is not valid Unicode and has no UTF-8 bytes") from None
