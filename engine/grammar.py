"""GBNF grammars, parsed and matched the way llama.cpp's llama-grammar.cpp does it.

A grammar is a list of rules; a rule is a flat list of elements holding its
alternatives one after another, each alternative closed by ALT (another one
follows) or END (the rule is over):

    ws ::= " " | [\\t\\n]*     ->   CHAR ' ', ALT, RULE_REF ws_1, END
    ws_1 ::= [\\t\\n] ws_1 |    ->   CHAR '\\t', CHAR_ALT '\\n', RULE_REF ws_1, ALT, END

Groups and repetitions become generated rules (`name_N`), exactly as
llama.cpp names and expands them, so rule counts and ids match its parser.

Matching is a pushdown automaton over Unicode code points. A *stack* is a
tuple of element positions, its last entry the terminal to match next; a
grammar state is the set of stacks that are still alive plus the bits of a
UTF-8 sequence that a token left unfinished. The empty stack means the input
may end here. States are interned and their byte transitions cached, so the
same state reached twice is computed once: the automaton is determinised
lazily, one byte at a time.
"""
from __future__ import annotations

import bisect
from enum import IntEnum
from typing import Sequence

from .errors import GrammarError

MAX_REPETITION_THRESHOLD = 2000  # llama.cpp's cap on repetition counts and the rules they expand to
MAX_CODE_POINT = 0x10FFFF


class Gre(IntEnum):
    """Element types, numbered as llama.cpp's llama_gretype."""
    END = 0             # end of a rule
    ALT = 1             # start of another alternative
    RULE_REF = 2        # non-terminal: value is a rule id
    CHAR = 3            # terminal: a code point, or the first item of a character class
    CHAR_NOT = 4        # first item of a negated class [^...]
    CHAR_RNG_UPPER = 5  # makes the preceding CHAR/CHAR_ALT the lower end of a range
    CHAR_ALT = 6        # another item of the same class
    CHAR_ANY = 7        # any code point (.)
    TOKEN = 8           # a whole vocabulary token, by id (<[id]>)
    TOKEN_NOT = 9       # any token but this one (!<[id]>)


Element = tuple[int, int]  # (Gre, value)


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "-"


class _Parser:
    """Recursive-descent GBNF parser over a str, mirroring llama_grammar_parser."""

    ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
    HEX_LENGTHS = {"x": 2, "u": 4, "U": 8}

    def __init__(self, src: str, vocab: Sequence[bytes] | None):
        self.src = src
        self.vocab = vocab
        self.symbol_ids: dict[str, int] = {}
        self.rules: list[list[Element] | None] = []

    # -- errors and positions -------------------------------------------------------------

    def error(self, pos: int, what: str) -> GrammarError:
        line = self.src.count("\n", 0, pos) + 1
        column = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        found = repr(self.src[pos:pos + 12]) if pos < len(self.src) else "end of input"
        return GrammarError(f"grammar line {line}, column {column}: {what}, found {found}")

    def at(self, pos: int) -> str:
        return self.src[pos] if pos < len(self.src) else ""

    # -- lexical pieces -------------------------------------------------------------------

    def space(self, pos: int, newline_ok: bool) -> int:
        """Skip blanks and comments, and line breaks where the context allows them."""
        while True:
            c = self.at(pos)
            if c in (" ", "\t") or (newline_ok and c in ("\r", "\n")):
                pos += 1
            elif c == "#":
                while self.at(pos) not in ("", "\r", "\n"):
                    pos += 1
            else:
                return pos

    def name(self, pos: int) -> int:
        end = pos
        while end < len(self.src) and _is_word_char(self.src[end]):
            end += 1
        if end == pos:
            raise self.error(pos, "expected a rule name")
        return end

    def integer(self, pos: int) -> tuple[int, int]:
        end = pos
        while self.at(end).isdigit() and self.at(end).isascii():
            end += 1
        if end == pos:
            raise self.error(pos, "expected an integer")
        return int(self.src[pos:end]), end

    def char(self, pos: int) -> tuple[int, int]:
        """One code point of a literal or class, escapes decoded; a Unicode scalar value, since
        input text decodes to nothing else (llama.cpp would keep an element that never matches)."""
        c = self.at(pos)
        if c == "":
            raise self.error(pos, "unexpected end of input")
        if c != "\\":
            code, end = ord(c), pos + 1
        else:
            e = self.at(pos + 1)
            if e in self.ESCAPES:
                return ord(self.ESCAPES[e]), pos + 2
            if e not in self.HEX_LENGTHS:
                raise self.error(pos, "unknown escape")
            n = self.HEX_LENGTHS[e]
            digits = self.src[pos + 2:pos + 2 + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(pos, f"expected {n} hex digits after \\{e}")
            code, end = int(digits, 16), pos + 2 + n
        if code > MAX_CODE_POINT or 0xD800 <= code <= 0xDFFF:
            raise self.error(pos, f"U+{code:04X} is not a Unicode character (a surrogate, or beyond U+10FFFF)")
        return code, end

    def token(self, pos: int) -> tuple[int, int]:
        """A token reference: <[id]>, or <text> naming a token whose piece is exactly that text."""
        start = pos
        pos += 1  # '<'
        if self.at(pos) == "[":
            token_id, pos = self.integer(pos + 1)
            if token_id > 0xFFFFFFFF:
                raise self.error(start, "token id too big")
            if self.at(pos) != "]":
                raise self.error(pos, "expected ']'")
            if self.at(pos + 1) != ">":
                raise self.error(pos + 1, "expected '>'")
            return token_id, pos + 2
        end = self.src.find(">", pos)
        if end < 0:
            raise self.error(pos, "expected '>'")
        if self.vocab is None:
            raise self.error(start, "a token given by its text needs a vocabulary (or write <[id]>)")
        text = self.src[start:end + 1].encode()
        ids = [i for i, piece in enumerate(self.vocab) if piece == text]
        if len(ids) != 1:
            raise self.error(start, f"expected a text that is exactly one token, {text!r} is not")
        return ids[0], end + 1

    # -- symbols and rules ----------------------------------------------------------------

    def symbol_id(self, name: str) -> int:
        return self.symbol_ids.setdefault(name, len(self.symbol_ids))

    def generated_symbol_id(self, base: str) -> int:
        next_id = len(self.symbol_ids)
        self.symbol_ids[f"{base}_{next_id}"] = next_id
        return next_id

    def add_rule(self, rule_id: int, rule: list[Element]) -> None:
        if len(self.rules) <= rule_id:
            self.rules.extend([None] * (rule_id + 1 - len(self.rules)))
        self.rules[rule_id] = rule

    # -- grammar structure ----------------------------------------------------------------

    def parse(self) -> None:
        pos = self.space(0, True)
        while pos < len(self.src):
            pos = self.rule(pos)

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        rule_id = self.symbol_id(name)
        pos = self.space(end, False)
        if self.src[pos:pos + 3] != "::=":
            raise self.error(pos, "expected '::='")
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, nested=False)
        if self.at(pos) == "\r":
            pos += 2 if self.at(pos + 1) == "\n" else 1
        elif self.at(pos) == "\n":
            pos += 1
        elif pos < len(self.src):
            raise self.error(pos, "expected a newline or the end of the grammar")
        return self.space(pos, True)

    def alternates(self, pos: int, rule_name: str, rule_id: int, nested: bool) -> int:
        rule: list[Element] = []
        pos = self.sequence(pos, rule_name, rule, nested)
        while self.at(pos) == "|":
            rule.append((Gre.ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), rule_name, rule, nested)
        rule.append((Gre.END, 0))
        self.add_rule(rule_id, rule)
        return pos

    def sequence(self, pos: int, rule_name: str, rule: list[Element], nested: bool) -> int:
        last_sym_start = len(rule)
        n_prev_rules = 1
        while pos < len(self.src):
            c = self.src[pos]
            if c == '"':
                pos += 1
                last_sym_start, n_prev_rules = len(rule), 1
                while self.at(pos) != '"':
                    if self.at(pos) == "":
                        raise self.error(pos, "expected '\"' to close the literal")
                    code, pos = self.char(pos)
                    rule.append((Gre.CHAR, code))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                first_type = Gre.CHAR
                if self.at(pos) == "^":
                    pos += 1
                    first_type = Gre.CHAR_NOT
                last_sym_start, n_prev_rules = len(rule), 1
                while self.at(pos) != "]":
                    if self.at(pos) == "":
                        raise self.error(pos, "expected ']' to close the character class")
                    code, pos = self.char(pos)
                    rule.append((Gre.CHAR_ALT if len(rule) > last_sym_start else first_type, code))
                    if self.at(pos) == "-" and self.at(pos + 1) != "]":
                        upper, pos = self.char(pos + 1)
                        rule.append((Gre.CHAR_RNG_UPPER, upper))
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                kind = Gre.TOKEN
                if c == "!":
                    kind = Gre.TOKEN_NOT
                    pos += 1
                    if self.at(pos) != "<":
                        raise self.error(pos, "expected '<' after '!'")
                token_id, pos = self.token(pos)
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append((kind, token_id))
                pos = self.space(pos, nested)
            elif _is_word_char(c):
                end = self.name(pos)
                ref = self.symbol_id(self.src[pos:end])
                pos = self.space(end, nested)
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append((Gre.RULE_REF, ref))
            elif c == "(":
                pos = self.space(pos + 1, True)
                n_before = len(self.symbol_ids)
                sub_id = self.generated_symbol_id(rule_name)
                pos = self.alternates(pos, rule_name, sub_id, nested=True)
                n_prev_rules = max(1, len(self.symbol_ids) - n_before)
                last_sym_start = len(rule)
                rule.append((Gre.RULE_REF, sub_id))
                if self.at(pos) != ")":
                    raise self.error(pos, "expected ')'")
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append((Gre.CHAR_ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?{":
                op_pos = pos
                pos = self.space(pos + 1, nested)
                if c == "*":
                    lo, hi = 0, None
                elif c == "+":
                    lo, hi = 1, None
                elif c == "?":
                    lo, hi = 0, 1
                else:
                    lo, hi, pos = self.braces(pos, nested)
                n_prev_rules = self.repeat(op_pos, rule, last_sym_start, n_prev_rules, lo, hi, rule_name)
            else:
                break
        return pos

    def braces(self, pos: int, nested: bool) -> tuple[int, int | None, int]:
        """The {m}, {m,} or {m,n} after an item; past the threshold, n means unbounded."""
        lo, pos = self.integer(pos)
        pos = self.space(pos, nested)
        hi: int | None = None
        if self.at(pos) == "}":
            hi = lo
        elif self.at(pos) == ",":
            pos = self.space(pos + 1, nested)
            if self.at(pos).isdigit():
                hi, pos = self.integer(pos)
                pos = self.space(pos, nested)
            if self.at(pos) != "}":
                raise self.error(pos, "expected '}'")
        else:
            raise self.error(pos, "expected ',' or '}'")
        pos = self.space(pos + 1, nested)
        if lo > MAX_REPETITION_THRESHOLD:
            raise self.error(pos, f"more than {MAX_REPETITION_THRESHOLD} repetitions")
        if hi is not None and hi > MAX_REPETITION_THRESHOLD:
            hi = None
        return lo, hi, pos

    def repeat(self, pos: int, rule: list[Element], start: int, n_prev_rules: int,
               lo: int, hi: int | None, rule_name: str) -> int:
        """Rewrite rule[start:] as S{lo,hi}: lo copies of S, then hi-lo nested optional rules
        (S'(k) ::= S S'(k-1) |), or one self-recursive rule S' ::= S S' | when unbounded."""
        if start == len(rule):
            raise self.error(pos, "expected an item before */+/?/{")
        item = rule[start:]
        total_rules = hi if hi else (lo if lo > 0 else 1)
        if n_prev_rules * total_rules > MAX_REPETITION_THRESHOLD:
            raise self.error(pos, "the repetition expands to too many rules")
        del rule[start:]
        rule.extend(item * lo)
        last_id = 0
        for i in range(1 if hi is None else hi - lo):
            rec_id = self.generated_symbol_id(rule_name)
            rec = list(item)
            if hi is None:
                rec.append((Gre.RULE_REF, rec_id))
            elif i > 0:
                rec.append((Gre.RULE_REF, last_id))
            rec += [(Gre.ALT, 0), (Gre.END, 0)]
            self.add_rule(rec_id, rec)
            last_id = rec_id
        if hi is None or hi > lo:
            rule.append((Gre.RULE_REF, last_id))
        return n_prev_rules * total_rules


def _alternatives(rule: list[Element]) -> list[list[Element]]:
    """The alternatives of a rule, each without its ALT/END terminator."""
    alts, current = [], []
    for kind, value in rule:
        if kind in (Gre.ALT, Gre.END):
            alts.append(current)
            current = []
        else:
            current.append((kind, value))
    return alts


def _check_left_recursion(rules: list[list[Element]], names: dict[int, str]) -> None:
    """Reject a rule that can reach itself before consuming input, as llama.cpp does.

    Like llama.cpp, a rule counts as possibly empty only if one of its own
    alternatives is empty, so `( [x]* )*` passes (the matcher's seen-set
    keeps such grammars from looping).
    """
    has_empty_alt = {i for i, rule in enumerate(rules) if any(not alt for alt in _alternatives(rule))}
    def leftmost_refs(rule_id: int):
        for alt in _alternatives(rules[rule_id]):
            for kind, value in alt:
                if kind != Gre.RULE_REF:
                    break
                yield value
                if value not in has_empty_alt:
                    break

    visited: set[int] = set()
    for root in range(len(rules)):
        if root in visited:
            continue
        path, in_progress = [(root, leftmost_refs(root))], {root}
        while path:
            rule_id, refs = path[-1]
            ref = next(refs, None)
            if ref is None:
                path.pop()
                in_progress.discard(rule_id)
                visited.add(rule_id)
            elif ref in in_progress:
                raise GrammarError(f"left recursion in rule '{names[ref]}': grammars cannot be left-recursive")
            elif ref not in visited:
                in_progress.add(ref)
                path.append((ref, leftmost_refs(ref)))


def _productive_rules(rules: list[list[Element]]) -> set[int]:
    """The rules that match at least one string: some alternative refers only to such rules.

    Worked from the rules known productive to the alternatives waiting on them, so a
    long chain of rules takes one pass, not one pass per link.
    """
    waiting: dict[tuple[int, int], set[int]] = {}  # (rule, alternative) -> the rules it still waits on
    waiters: dict[int, list[tuple[int, int]]] = {}  # rule -> the alternatives waiting on it
    ready: list[int] = []
    for rule_id, rule in enumerate(rules):
        for i, alt in enumerate(_alternatives(rule)):
            refs = {value for kind, value in alt if kind == Gre.RULE_REF}
            waiting[rule_id, i] = refs
            for ref in refs:
                waiters.setdefault(ref, []).append((rule_id, i))
            if not refs:
                ready.append(rule_id)
    known: set[int] = set()
    while ready:
        rule_id = ready.pop()
        if rule_id in known:
            continue
        known.add(rule_id)
        for waiter in waiters.get(rule_id, ()):
            waiting[waiter].discard(rule_id)
            if not waiting[waiter]:
                ready.append(waiter[0])
    return known


class Grammar:
    """A parsed GBNF grammar and its lazily built pushdown automaton.

    States are small ints (see the module docstring); `start_state` is where
    matching begins, `advance` feeds it bytes, `can_end` says whether the
    input may stop. Everything computed is cached on the grammar and shared
    by every matcher and sampler that uses it.
    """

    def __init__(self, rules: list[list[Element]], symbol_ids: dict[str, int], start: str = "root"):
        names = {i: name for name, i in symbol_ids.items()}
        if start not in symbol_ids:
            raise GrammarError(f"the grammar has no start rule '{start}'")
        if not rules:
            raise GrammarError("the grammar has no rules")
        self.rules = rules
        self.symbol_ids = symbol_ids
        self.start_rule = symbol_ids[start]
        _check_left_recursion(rules, names)
        if self.start_rule not in _productive_rules(rules):
            raise GrammarError(f"start rule '{start}' cannot match any input")
        self._build_tables()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_string(cls, gbnf: str, start: str = "root", vocab: Sequence[bytes] | None = None) -> "Grammar":
        """Parse GBNF text. `vocab` (token pieces) resolves <text> token references."""
        if isinstance(gbnf, bytes):
            try:
                gbnf = gbnf.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GrammarError(f"grammar is not valid UTF-8: {e}") from None
        if not isinstance(gbnf, str):
            raise GrammarError(f"grammar must be str, got {type(gbnf).__name__}")
        parser = _Parser(gbnf, vocab)
        try:
            parser.parse()
        except RecursionError:
            raise GrammarError("grammar nests groups too deeply") from None
        names = {i: name for name, i in parser.symbol_ids.items()}
        missing = [names[i] for i, rule in enumerate(parser.rules) if rule is None]
        missing += [names[i] for i in range(len(parser.rules), len(parser.symbol_ids))]
        if missing:
            raise GrammarError(f"undefined rule '{missing[0]}'")
        return cls(parser.rules, parser.symbol_ids, start)

    @classmethod
    def from_json_schema(cls, schema: dict | bool | str) -> "Grammar":
        """A grammar for the JSON documents a JSON Schema accepts (see engine.json_schema)."""
        from .json_schema import json_schema_to_gbnf
        return cls.from_string(json_schema_to_gbnf(schema))

    @classmethod
    def json(cls) -> "Grammar":
        """Any JSON object, as llama.cpp's grammars/json.gbnf has it."""
        return cls.from_string(JSON_GBNF)

    def _build_tables(self) -> None:
        """Lay the rules end to end so a position is one int; precompute alternatives and classes."""
        self.kind: list[int] = []
        self.value: list[int] = []
        rule_offsets = []
        for rule in self.rules:
            rule_offsets.append(len(self.kind))
            for k, v in rule:
                self.kind.append(int(k))
                self.value.append(v)
        n = len(self.kind)
        # where each alternative of each rule begins
        self.alt_starts: list[list[int]] = []
        for rule_id, rule in enumerate(self.rules):
            starts, at = [], rule_offsets[rule_id]
            starts.append(at)
            for i, (k, _) in enumerate(rule):
                if k == Gre.ALT:
                    starts.append(at + i + 1)
            self.alt_starts.append(starts)
        self.is_end = [k in (Gre.END, Gre.ALT) for k in self.kind]
        # character classes: (positive, sorted disjoint ranges as flat bounds, position after the class)
        self.char_class: dict[int, tuple[bool, list[int], int]] = {}
        for p in range(n):
            if self.kind[p] in (Gre.CHAR, Gre.CHAR_NOT, Gre.CHAR_ANY):
                self.char_class[p] = self._char_class(p)
        self.boundaries = sorted({b for _, bounds, _ in self.char_class.values() for b in bounds})
        self._advance_cache: dict[tuple, tuple] = {}
        self._code_point_cache: dict[tuple, int] = {}
        self._partial_cache: dict[tuple, int] = {}
        # interned states: (stacks, partial_value, partial_remaining)
        self._states: list[tuple[tuple, int, int]] = []
        self._state_ids: dict[tuple, int] = {}
        self._transitions: list[dict[int, int]] = []
        self.DEAD = self._intern((), 0, 0)
        initial: list[tuple] = []
        for a in self.alt_starts[self.start_rule]:
            initial.extend(self._advance(() if self.is_end[a] else (a,)))
        self._start = self._intern(tuple(sorted(set(initial))), 0, 0)

    def _char_class(self, p: int) -> tuple[bool, list[int], int]:
        positive = self.kind[p] != Gre.CHAR_NOT
        ranges = []
        while True:
            if self.kind[p] == Gre.CHAR_ANY:
                ranges.append((0, MAX_CODE_POINT))
                p += 1
            elif self.kind[p + 1] == Gre.CHAR_RNG_UPPER:
                ranges.append((self.value[p], self.value[p + 1]))
                p += 2
            else:
                ranges.append((self.value[p], self.value[p]))
                p += 1
            if self.kind[p] != Gre.CHAR_ALT:
                break
        bounds = []  # merged ranges as [lo0, hi0 + 1, lo1, hi1 + 1, ...]
        for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
            if bounds and lo <= bounds[-1]:
                bounds[-1] = max(bounds[-1], hi + 1)
            else:
                bounds += [lo, hi + 1]
        return positive, bounds, p

    # -- the pushdown automaton -----------------------------------------------------------

    def _advance(self, stack: tuple) -> tuple:
        """Expand rule references on top of a stack until each resulting stack tops a terminal
        (or is empty: the input may end)."""
        cached = self._advance_cache.get(stack)
        if cached is not None:
            return cached
        out: dict[tuple, None] = {}
        seen = set()
        todo = [stack]
        kind, value, is_end, alt_starts = self.kind, self.value, self.is_end, self.alt_starts
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            if not s or kind[s[-1]] != Gre.RULE_REF:
                out[s] = None
                continue
            p = s[-1]
            below = s[:-1] if is_end[p + 1] else s[:-1] + (p + 1,)
            for a in alt_starts[value[p]]:
                todo.append(below if is_end[a] else below + (a,))
        result = tuple(out)
        self._advance_cache[stack] = result
        return result

    def _intern(self, stacks: tuple, partial_value: int, n_remain: int) -> int:
        key = (stacks, partial_value, n_remain)
        sid = self._state_ids.get(key)
        if sid is None:
            sid = len(self._states)
            self._states.append(key)
            self._state_ids[key] = sid
            self._transitions.append({})
        return sid

    def _matches(self, p: int, code: int) -> bool:
        positive, bounds, _ = self.char_class[p]
        return (bisect.bisect_right(bounds, code) & 1) == positive

    def _accept_code_point(self, stacks: tuple, code: int) -> tuple:
        out: dict[tuple, None] = {}
        for s in stacks:
            if s and s[-1] in self.char_class and self._matches(s[-1], code):
                after = self.char_class[s[-1]][2]
                for t in self._advance(s[:-1] if self.is_end[after] else s[:-1] + (after,)):
                    out[t] = None
        return tuple(sorted(out))

    def step(self, sid: int, byte: int) -> int:
        """The state after one more byte (DEAD if the grammar rejects it); cached."""
        nxt = self._transitions[sid].get(byte)
        if nxt is None:
            nxt = self._step(sid, byte)
            self._transitions[sid][byte] = nxt
        return nxt

    def _step(self, sid: int, byte: int) -> int:
        stacks, value, n_remain = self._states[sid]
        if sid == self.DEAD:
            return self.DEAD
        if n_remain > 0:
            if byte >> 6 != 2:
                return self.DEAD  # a continuation byte was due
            value = (value << 6) | (byte & 0x3F)
            n_remain -= 1
            if n_remain:
                return self._partial_state(stacks, value, n_remain)
            return self._code_point_state(stacks, value)
        n_follow = UTF8_FOLLOW[byte >> 4]
        if n_follow < 0:
            return self.DEAD  # a continuation byte cannot start a code point
        if n_follow == 0:
            return self._code_point_state(stacks, byte)
        # only stacks waiting for a character outlive a token that ends mid-character (llama.cpp drops
        # the empty and whole-token ones), so keep just those while the sequence is pending
        waiting = tuple(s for s in stacks if s and s[-1] in self.char_class)
        return self._partial_state(waiting, byte & ((1 << (7 - n_follow)) - 1), n_follow) if waiting else self.DEAD

    def _partial_state(self, stacks: tuple, value: int, n_remain: int) -> int:
        """The state of an unfinished UTF-8 sequence. Sequences whose every completion falls in
        the same class of code points behave alike, so they share the first one's state (not
        for value 0 or overlong leads, which llama.cpp's partial check treats specially)."""
        if value == 0 or (n_remain == 1 and value < 2):
            return self._intern(stacks, value, n_remain)
        low = value << (6 * n_remain)
        high = low | ((1 << (6 * n_remain)) - 1)
        interval = bisect.bisect_right(self.boundaries, low)
        if bisect.bisect_right(self.boundaries, high) != interval:
            return self._intern(stacks, value, n_remain)
        key = (stacks, n_remain, interval)
        sid = self._partial_cache.get(key)
        if sid is None:
            sid = self._partial_cache[key] = self._intern(stacks, value, n_remain)
        return sid

    def _code_point_state(self, stacks: tuple, code: int) -> int:
        """The state after a whole code point; cached per class of code points the grammar
        cannot tell apart (they fall between the same class boundaries)."""
        key = (stacks, bisect.bisect_right(self.boundaries, code))
        sid = self._code_point_cache.get(key)
        if sid is None:
            new = self._accept_code_point(stacks, code)
            sid = self._code_point_cache[key] = self._intern(new, 0, 0) if new else self.DEAD
        return sid

    def piece_ok_at_end(self, sid: int) -> bool:
        """Whether a token may end in this state: always, unless it left a UTF-8 sequence
        unfinished that no live terminal could complete (llama_grammar_match_partial_char)."""
        stacks, value, n_remain = self._states[sid]
        if sid == self.DEAD:
            return False
        if n_remain == 0:
            return True
        if n_remain == 1 and value < 2:
            return False  # overlong two-byte encoding of an ASCII char
        low = value << (6 * n_remain)
        high = low | ((1 << (6 * n_remain)) - 1)
        if low == 0:
            low = {2: 1 << 11, 3: 1 << 16}.get(n_remain, low)
        for s in stacks:
            if s and s[-1] in self.char_class:
                positive, bounds, _ = self.char_class[s[-1]]
                overlaps = any(bounds[i] <= high and low < bounds[i + 1] for i in range(0, len(bounds), 2))
                if overlaps == positive:
                    return True
        return False

    def token_stacks_state(self, sid: int, token_id: int) -> int:
        """The state after a whole-token terminal (<[id]> or !<[id]>) accepts token_id."""
        stacks, _, n_remain = self._states[sid]
        if n_remain:
            return self.DEAD
        out: dict[tuple, None] = {}
        for s in stacks:
            if s and self.kind[s[-1]] in (Gre.TOKEN, Gre.TOKEN_NOT):
                p = s[-1]
                if (self.value[p] == token_id) == (self.kind[p] == Gre.TOKEN):
                    for t in self._advance(s[:-1] if self.is_end[p + 1] else s[:-1] + (p + 1,)):
                        out[t] = None
        return self._intern(tuple(sorted(out)), 0, 0) if out else self.DEAD

    def token_terminals(self, sid: int) -> list[tuple[int, int]]:
        """The (kind, token id) of every whole-token terminal on top of a live stack."""
        stacks, _, n_remain = self._states[sid]
        if n_remain:
            return []
        return sorted({(self.kind[s[-1]], self.value[s[-1]]) for s in stacks
                       if s and self.kind[s[-1]] in (Gre.TOKEN, Gre.TOKEN_NOT)})

    # -- public matching ------------------------------------------------------------------

    @property
    def start_state(self) -> int:
        return self._start

    @property
    def n_states(self) -> int:
        """How many states the automaton has built so far (state ids are below this)."""
        return len(self._states)

    def can_end(self, sid: int) -> bool:
        """Whether end-of-generation is allowed: some stack is empty (llama.cpp does not look
        at a pending UTF-8 sequence here)."""
        return () in self._states[sid][0]

    def advance(self, sid: int, piece: bytes) -> int:
        """Feed the bytes of a piece; returns DEAD as soon as they cannot continue the grammar."""
        for b in piece:
            sid = self.step(sid, b)
            if sid == self.DEAD:
                break
        return sid

    def accept_token(self, sid: int, token_id: int, piece: bytes) -> int:
        """llama_grammar_accept_token: whole-token terminals match by id, the rest by the piece's
        characters (up to its first NUL). Raises GrammarError if the grammar rejects the token."""
        piece = piece.split(b"\0", 1)[0]
        by_chars = self.advance(sid, piece) if piece else self.DEAD
        by_token = self.token_stacks_state(sid, token_id)
        if by_chars != self.DEAD and by_token != self.DEAD:
            a, b = self._states[by_chars], self._states[by_token]
            return self._intern(tuple(sorted(set(a[0]) | set(b[0]))), a[1], a[2])
        if by_chars == self.DEAD and by_token == self.DEAD:
            raise GrammarError(f"the grammar does not allow token {token_id} ({piece!r}) here")
        return by_chars if by_chars != self.DEAD else by_token

    def matches(self, text: str | bytes) -> bool:
        """Whether the whole text is a sentence of the grammar."""
        data = text.encode() if isinstance(text, str) else text
        sid = self.advance(self._start, data)
        return self.can_end(sid) and self._states[sid][2] == 0


# UTF-8 continuation bytes that follow a lead byte, by its high nibble; -1: not a lead byte
UTF8_FOLLOW = (0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, 1, 1, 2, 3)

# grammars/json.gbnf of llama.cpp (rules, not comments)
JSON_GBNF = r'''root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

ws ::= | " " | "\n" [ \t]{0,20}
'''
