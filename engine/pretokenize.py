"""Pre-tokenizers of byte-level BPE vocabularies: text cut into words before BPE, per ``tokenizer.ggml.pre``.

A pre-tokenizer is a list of regex stages. The first stage cuts the whole text;
each later one cuts every piece the earlier stages left. Within a piece, each
match is a word and so is each run of text between matches, so no character is
ever dropped. These are the splits llama.cpp 0.3.36 makes (``llama-vocab.cpp``
and ``unicode.cpp``), written for the ``regex`` package.

Character classes follow llama.cpp's tables, which are Unicode 15.1: a code point
that Unicode assigned later is, to llama.cpp, in no category (not a letter, not
a number...). The installed ``regex`` may know a later Unicode, so the stages
run on a copy of the text in which each character unassigned in 15.1
(``data/unassigned-unicode-15.1.txt``) is a noncharacter, which every version
leaves in no category; ``\\p{L}`` and friends then agree with llama.cpp, and
``\\s`` is Unicode's White_Space, as in llama.cpp.

Quirks kept from llama.cpp:
- contractions are matched as ``'[sS]|'[tT]|...`` where the models' own regexes
  say ``(?i:'s|'t|...)`` (so no case folding beyond ASCII);
- stages written with literal non-ASCII ranges (the DeepSeek ones) never match
  non-ASCII white space inside those ranges: llama.cpp's regex engine sees such
  a character as a vertical tab;
- ``$`` is the end of the piece being cut.
"""
from __future__ import annotations

import bisect
from functools import lru_cache
from itertools import accumulate
from importlib import resources
from typing import Callable

import regex

from .errors import ModelError


PLACEHOLDER = "\U0010FFFF"  # a noncharacter: unassigned in every Unicode version


@lru_cache(maxsize=1)
def _unassigned() -> tuple[list[int], list[int]]:
    """The ranges of code points unassigned in Unicode 15.1: (first code points, last code points)."""
    firsts, lasts = [], []
    for line in resources.files("engine").joinpath("data/unassigned-unicode-15.1.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            first, _, last = line.partition("..")
            firsts.append(int(first, 16))
            lasts.append(int(last or first, 16))
    return firsts, lasts


def as_unicode_15_1(text: str) -> str:
    """``text`` with every character that Unicode 15.1 had not assigned written as PLACEHOLDER.

    The same length, so spans carry over; ``text`` itself when it has none (the usual case).
    """
    if text.isascii():
        return text
    firsts, lasts = _unassigned()
    unassigned = [char for char in set(text) if _in_ranges(ord(char), firsts, lasts)]
    if not unassigned:
        return text
    return text.translate(dict.fromkeys(map(ord, unassigned), PLACEHOLDER))


def _in_ranges(code_point: int, firsts: list[int], lasts: list[int]) -> bool:
    i = bisect.bisect_right(firsts, code_point) - 1
    return i >= 0 and code_point <= lasts[i]


CONTRACTIONS = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
# [\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF] less the white space in it (see the module notes)
CJK = ("[\u0800-\u167F\u1681-\u1FFF\u200B-\u2027\u202A-\u202E\u2030-\u205E\u2060-\u2FFF\u3001-\u9FA5"
       "\uAC00-\uD7FF]+")
DEEPSEEK_LETTERS = ("[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
                    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
                    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
                    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
                    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
                    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102"
                    "\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139"
                    "\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
                    "\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
                    "\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
                    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
                    "\U0001E900-\U0001E943]")
# \s+$, tried only where a run of white space starts: the same match, but a long run that
# does not end the piece is scanned once rather than once from each of its characters
TRAILING_SPACE = "(?<!\\s)\\s+\\Z"
DEEPSEEK_PUNCTUATION = "[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3001-\u3002]"  # \u3000 is white space


def _stages(kind: str) -> list[str]:
    """The regexes of pre-tokenizer ``kind`` (a value of KINDS), in the order they cut."""
    L, N, M, P = "\\p{L}", "\\p{N}", "\\p{M}", "\\p{P}"
    gpt2 = f"'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?[^\\s{L}{N}]+|\\s+(?!\\S)|\\s+"

    def llama3_like(letters: str, digits: str) -> str:
        """Llama 3's regex, with the classes that make up a word and a number."""
        return (f"{CONTRACTIONS}|[^\\r\\n{L}{N}]?[{letters}]+|{digits}| ?[^\\s{letters}{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

    return {
        "default": [f"[{P}$+<=>^~|]+", gpt2, f"{N}+", "[0-9][0-9][0-9]"],
        "gpt2": [gpt2],
        "llama3": [llama3_like(L, f"{N}{{1,3}}")],
        "qwen2": [llama3_like(L, N)],
        "qwen35": [llama3_like(L + M, N)],
        "starcoder": [N, gpt2],
        "falcon": [f"[{P}$+<=>^~|`]+", gpt2, "[0-9][0-9][0-9]"],
        "deepseek-llm": ["[\\r\\n]", f"\\s?{DEEPSEEK_LETTERS}+", f"\\s?{DEEPSEEK_PUNCTUATION}+", TRAILING_SPACE, CJK,
                         f"{N}+"],
        "deepseek-coder": ["[\\r\\n]", f"\\s?{L}+", f"\\s?{P}+", CJK, N],
    }[kind]


# tokenizer.ggml.pre -> the kind of split, as llama.cpp 0.3.36 maps its names
KINDS = {
    "default": "default",
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe", "chatglm-bpe", "glm4", "glm5"], "llama3"),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
                     "solar-open", "grok-2"], "qwen2"),
    "qwen35": "qwen35",
    **dict.fromkeys(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                     "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4", "mpt", "olmo",
                     "jais", "trillion", "granite-docling"], "gpt2"),
    **dict.fromkeys(["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
                     "mellum2"], "starcoder"),
    "falcon": "falcon",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
}

# names for which llama.cpp adds BOS unless the GGUF says otherwise (add_bos)
ADD_BOS = frozenset(name for name, kind in KINDS.items() if kind == "llama3") - {"dbrx", "smaug-bpe", "chatglm-bpe",
                                                                                 "glm4", "glm5"}
# names for which llama.cpp looks a whole word up in the vocabulary before merging (ignore_merges)
IGNORE_MERGES = ADD_BOS | {"glm4", "glm5"}
# names whose vocabulary has no BOS token unless the GGUF names one (others: id 11, as GPT-2's)
NO_BOS = frozenset({"chatglm-bpe", "glm4", "glm5"})


@lru_cache(maxsize=None)
def pre_tokenizer(pre: str) -> Callable[[str], list[str]]:
    """``words(text)`` for ``tokenizer.ggml.pre == pre``: the words of ``text``, which join back to it."""
    kind = KINDS.get(pre)
    if kind is None:
        raise ModelError(f"tokenizer.ggml.pre {pre!r} is not a pre-tokenizer llamanp knows "
                         f"(known: {', '.join(sorted(KINDS))})")
    first, *rest = [regex.compile(f"({stage})") for stage in _stages(kind)]

    def words(text: str) -> list[str]:
        view = as_unicode_15_1(text)
        pieces = [w for w in first.split(view) if w]
        for stage in rest:
            pieces = [w for piece in pieces for w in stage.split(piece) if w]
        return pieces if view is text else _same_spans(text, pieces)

    return words


def _same_spans(text: str, pieces: list[str]) -> list[str]:
    """The pieces of ``text`` as long as ``pieces`` (which cut a same-length copy of it)."""
    ends = list(accumulate(map(len, pieces)))
    return [text[start:end] for start, end in zip([0] + ends, ends)]
