"""GBNF grammars, JSON schemas and grammar-constrained sampling against llama.cpp.

The reference is llama.cpp itself through llama_cpp's low-level API: its
grammar sampler over the llama2 vocabulary (a vocab-only model) gives the
token masks and string verdicts we must reproduce. The grammar files and the
test strings of tests/test-grammar-integration.cpp are copied from llama.cpp
as inputs (tests/data); verdicts for grammars are computed live.
"""
from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from engine.errors import GrammarError
from engine.grammar import JSON_GBNF, Grammar
from engine.grammar_sampler import GrammarSampler
from engine.json_schema import UNSUPPORTED, json_schema_to_gbnf
from engine.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
VOCAB = DATA / "ggml-vocab-llama-spm.gguf"
GRAMMAR_FILES = sorted((DATA / "grammars").glob("*.gbnf"))
CASES = json.loads((DATA / "grammar_integration_cases.json").read_text())
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(VOCAB)


@pytest.fixture(scope="module")
def llama_vocab():
    llm = llama_cpp.Llama(model_path=str(VOCAB), vocab_only=True, verbose=False)
    yield llm._model.vocab
    llm.close()


class ReferenceGrammar:
    """llama.cpp's grammar sampler: masks over any candidate list, and token acceptance."""

    def __init__(self, vocab, gbnf: str, root: str = "root"):
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), root.encode())
        if not self.sampler:
            raise GrammarError("llama.cpp rejected the grammar")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def allowed(self, ids: np.ndarray) -> np.ndarray:
        data = np.zeros(len(ids), dtype=TOKEN_DATA)
        data["id"] = ids
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(ids), selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(array))
        return np.isfinite(data["logit"])

    def mask(self) -> np.ndarray:
        return self.allowed(np.arange(self.n_vocab, dtype=np.int32))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.sampler)


def reference_builds(vocab, gbnf: str, root: str = "root") -> bool:
    try:
        ReferenceGrammar(vocab, gbnf, root).close()
        return True
    except GrammarError:
        return False


def greedy_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """Some tokenization of text: longest vocabulary piece first, bytes as byte tokens."""
    ids = {piece: i for i, piece in enumerate(tokenizer.pieces) if i != tokenizer.eos}
    data, out, pos = text.encode(), [], 0
    while pos < len(data):
        for n in range(min(16, len(data) - pos), 0, -1):
            if data[pos:pos + n] in ids:
                out.append(ids[data[pos:pos + n]])
                pos += n
                break
        else:
            out.append(tokenizer.byte_tokens[data[pos]])
            pos += 1
    return out


def reference_verdict(vocab, gbnf: str, tokens: list[int], eos: int) -> bool:
    """Whether llama.cpp lets these tokens through one by one and then allows end of generation."""
    ref = ReferenceGrammar(vocab, gbnf)
    try:
        for t in tokens:
            if not ref.allowed(np.array([t], dtype=np.int32))[0]:
                return False
            ref.accept(t)
        return bool(ref.allowed(np.array([eos], dtype=np.int32))[0])
    finally:
        ref.close()


def our_verdict(grammar: Grammar, sampler: GrammarSampler, tokens: list[int], eos: int) -> bool:
    sampler.reset()
    for t in tokens:
        if not sampler.allowed_tokens()[t]:
            return False
        sampler.accept(t)
    return bool(sampler.allowed_tokens()[eos])


def compare_random_walk(vocab, tokenizer: Tokenizer, gbnf: str, steps: int, seed: int) -> int:
    """Walk `steps` random allowed tokens, asserting our mask equals llama.cpp's at every step."""
    rng = np.random.default_rng(seed)
    ours = GrammarSampler(Grammar.from_string(gbnf), tokenizer.pieces, tokenizer.eos, np.argmax)
    ref = ReferenceGrammar(vocab, gbnf)
    short = np.array([len(p) <= 2 for p in tokenizer.pieces])
    try:
        for step in range(steps):
            expected, got = ref.mask(), ours.allowed_tokens()
            diff = np.flatnonzero(expected != got)
            assert not len(diff), (f"step {step}: mask differs on {len(diff)} tokens, e.g. "
                                   f"{[(int(t), tokenizer.pieces[t], bool(expected[t])) for t in diff[:5]]}")
            choices = np.flatnonzero(expected & (np.arange(len(expected)) != tokenizer.eos))
            if not len(choices):
                return step
            if rng.random() < 0.6 and (expected & short).any():  # favour structure over long words
                choices = np.flatnonzero(expected & short & (np.arange(len(expected)) != tokenizer.eos))
            token = int(rng.choice(choices))
            ref.accept(token)
            ours.accept(token)
        return steps
    finally:
        ref.close()


# ---- the reference's conventions --------------------------------------------------------------------


def test_end_of_generation_tokens_are_eos_only(tokenizer, llama_vocab):
    eog = [t for t in range(tokenizer.n_vocab) if llama_cpp.llama_vocab_is_eog(llama_vocab, t)]
    assert eog == [tokenizer.eos]


def test_pieces_are_the_ones_the_reference_grammar_sees(tokenizer, llama_vocab):
    buf = ctypes.create_string_buffer(64)
    for t in range(tokenizer.n_vocab):
        n = llama_cpp.llama_token_to_piece(llama_vocab, t, buf, len(buf), 0, True)
        assert buf.raw[:n] == tokenizer.pieces[t]


# ---- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GRAMMAR_FILES, ids=lambda p: p.name)
def test_llama_cpp_grammar_files_parse(path, llama_vocab):
    text = path.read_text()
    assert reference_builds(llama_vocab, text)
    grammar = Grammar.from_string(text)
    assert grammar.start_rule == grammar.symbol_ids["root"]


def test_builtin_json_grammar_is_json_gbnf():
    shipped = Grammar.from_string((DATA / "grammars" / "json.gbnf").read_text())
    builtin = Grammar.json()
    assert builtin.rules == shipped.rules and builtin.symbol_ids == shipped.symbol_ids
    assert JSON_GBNF.split("ws ::=")[1] in (DATA / "grammars" / "json.gbnf").read_text()


def test_repetitions_expand_like_llama_cpp():
    # S{2,4} -> S S S'(2); S'(2) ::= S S'(1) |; S'(1) ::= S |  (rule names: rule_N by symbol count)
    g = Grammar.from_string('root ::= "a"{2,4} "b"*')
    assert g.symbol_ids == {"root": 0, "root_1": 1, "root_2": 2, "root_3": 3}
    assert [g.matches(s) for s in ["a", "aa", "aaaa", "aaaaa", "aabbb"]] == [False, True, True, False, True]


MALFORMED = [
    ('root ::= "abc', "close the literal"),
    ("root ::= [abc", "close the character class"),
    ('root ::= ("a" | "b"', "expected ')'"),
    ('root ::= "a" \\q', "expected a newline"),
    ('root ::= "\\q"', "unknown escape"),
    ('root ::= "\\x4"', "hex digits"),
    ('root = "a"', "expected '::='"),
    ('root ::= "a"{2', "expected ',' or '}'"),
    ('root ::= "a"{2,3', "expected '}'"),
    ('root ::= "a"{,3}', "expected an integer"),
    ("root ::= *", "expected an item before"),
    ('root ::= <[12', "expected ']'"),
    ('root ::= "a"\n  ::= "b"', "expected a rule name"),
]


@pytest.mark.parametrize("text,expected", MALFORMED)
def test_malformed_grammar_is_rejected_with_position(text, expected, llama_vocab):
    assert not reference_builds(llama_vocab, text)
    with pytest.raises(GrammarError, match=r"line \d+, column \d+") as info:
        Grammar.from_string(text)
    assert expected in str(info.value)


def test_error_position_counts_lines_and_columns():
    with pytest.raises(GrammarError, match="line 3, column 11"):
        Grammar.from_string('root ::= a\na ::= "x"\nb ::= "y" ]')


SEMANTIC_FAILURES = [
    ('rot ::= "a"', "no start rule 'root'"),
    ('root ::= expr\nexpr ::= term ("+" term)*\nterm ::= numero\nnumber ::= [0-9]+', "undefined rule 'numero'"),
    ('root ::= "a" | root "a"', "left recursion"),
    ('root ::= asdf\nasdf ::= "a" | asdf "a"', "left recursion"),
    ('root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | asdf "d" | "e"', "left recursion"),
    ('root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | empty asdf "d" | "e"\nempty ::= "blah" | ',
     "left recursion"),
    ('root ::= "a"{2001}', "repetitions"),
]


@pytest.mark.parametrize("text,expected", SEMANTIC_FAILURES)
def test_invalid_grammar_is_rejected(text, expected, llama_vocab):
    assert not reference_builds(llama_vocab, text)
    with pytest.raises(GrammarError, match=expected):
        Grammar.from_string(text)


def test_empty_grammar_is_rejected():
    # llama.cpp treats an empty grammar string as "no grammar"; we ask for a grammar explicitly
    with pytest.raises(GrammarError, match="no start rule"):
        Grammar.from_string("  # nothing\n")


def test_start_rule_that_matches_nothing_is_rejected():
    with pytest.raises(GrammarError, match="cannot match any input"):
        Grammar.from_string('root ::= "x" a\na ::= "y" a')


def test_custom_start_rule(llama_vocab):
    text = 'greeting ::= "hi" | "hello"'
    assert reference_builds(llama_vocab, text, "greeting") and not reference_builds(llama_vocab, text)
    assert Grammar.from_string(text, start="greeting").matches("hello")
    with pytest.raises(GrammarError, match="no start rule 'root'"):
        Grammar.from_string(text)


def test_token_text_reference_resolves_through_vocabulary(tokenizer):
    g = Grammar.from_string('root ::= <s> "x"', vocab=tokenizer.pieces)
    assert g.rules[0][0] == (8, 1)  # TOKEN <s> = id 1
    with pytest.raises(GrammarError, match="needs a vocabulary"):
        Grammar.from_string('root ::= <s> "x"')


# ---- matching strings, as tests/test-grammar-integration.cpp does ----------------------------------


GRAMMAR_CASES = [c for c in CASES["cases"] if c["kind"] == "grammar"]


@pytest.mark.parametrize("case", GRAMMAR_CASES, ids=[c["desc"] for c in GRAMMAR_CASES])
def test_integration_strings_match_like_llama_cpp(case, tokenizer, llama_vocab):
    grammar = Grammar.from_string(case["body"])
    sampler = GrammarSampler(grammar, tokenizer.pieces, tokenizer.eos, np.argmax)
    for text in case["passing"] + case["failing"]:
        tokens = greedy_tokens(tokenizer, text)
        expected = reference_verdict(llama_vocab, case["body"], tokens, tokenizer.eos)
        assert expected == (text in case["passing"])  # the verdict llama.cpp's own test asserts
        assert our_verdict(grammar, sampler, tokens, tokenizer.eos) == expected, text
        assert grammar.matches(text) == expected, text


TOKEN_GRAMMAR = """root ::= reasoning+ content tool-call*
reasoning ::= <[10]> (!<[11]>)* <[11]>
content ::= <[20]> (!<[21]>)* <[21]>
tool-call ::= <[12]> name <[13]> args <[14]>
name ::= (!<[13]>)+
args ::= (!<[14]>)*"""


@pytest.mark.parametrize("parts", [
    [10, "I am thinking", 11, 20, "hello world!", 21, 12, "search", 13, "query=test", 14],
    [10, 11, 20, "content", 21],
    [10, "think", 12, " nested", 11, 20, 10, "more", 21, 12, "fn", 13, "x=1", 14, 12, "fn2", 13, 14],
    [20, "content only", 21],
    [10, "no closing reasoning"],
    [10, 11, 20, 21, 12, "incomplete tool"],
    [10, 11, 11, 20, 21],
    [10, 11, 20, 21, 12, 13, 14],
])
def test_token_terminals_match_like_llama_cpp(parts, tokenizer, llama_vocab):
    # the token-sequence cases of test-grammar-integration.cpp's "complex grammar with tokens"
    tokens = [t for p in parts for t in ([p] if isinstance(p, int) else greedy_tokens(tokenizer, p))]
    grammar = Grammar.from_string(TOKEN_GRAMMAR)
    sampler = GrammarSampler(grammar, tokenizer.pieces, tokenizer.eos, np.argmax)
    assert our_verdict(grammar, sampler, tokens, tokenizer.eos) == reference_verdict(
        llama_vocab, TOKEN_GRAMMAR, tokens, tokenizer.eos)


def test_partial_utf8_across_tokens(tokenizer, llama_vocab):
    # byte tokens split multi-byte characters; classes must judge the unfinished sequences as llama.cpp does
    gbnf = 'root ::= [ぁ-ゟ]+ "." | [^é]+ "!"'
    grammar = Grammar.from_string(gbnf)
    sampler = GrammarSampler(grammar, tokenizer.pieces, tokenizer.eos, np.argmax)
    for text in ["ひらがな.", "ひらカ.", "ab!", "aé!", "è!", "ぁ!"]:
        tokens = [tokenizer.byte_tokens[b] for b in text.encode()]
        assert our_verdict(grammar, sampler, tokens, tokenizer.eos) == reference_verdict(
            llama_vocab, gbnf, tokens, tokenizer.eos), text


# ---- token masks, live against llama.cpp ------------------------------------------------------------


@pytest.mark.parametrize("path", GRAMMAR_FILES, ids=lambda p: p.name)
def test_masks_match_llama_cpp_along_random_walks(path, tokenizer, llama_vocab):
    compare_random_walk(llama_vocab, tokenizer, path.read_text(), steps=25, seed=len(path.name))


@pytest.mark.parametrize("gbnf", [
    'root ::= <[1]> content <[13]>\ncontent ::= (!<[13]>)*',
    TOKEN_GRAMMAR,
    'root ::= "a" ( <[2]> | "b" )* "c"?',
    'root ::= [^\\x00-\\x7F]{1,3} "x"',
    'root ::= ( [x]* )*',
    'root ::= "{" ws "}" ws\nws ::= [ \\t\\n]*',
], ids=["tokens", "token-grammar", "eos-terminal", "non-ascii", "nested-star", "ws"])
def test_masks_match_llama_cpp_for_special_cases(gbnf, tokenizer, llama_vocab):
    for seed in range(3):
        compare_random_walk(llama_vocab, tokenizer, gbnf, steps=12, seed=seed)


def test_masks_match_llama_cpp_for_schema_grammar(tokenizer, llama_vocab):
    gbnf = json_schema_to_gbnf(PERSON)
    compare_random_walk(llama_vocab, tokenizer, gbnf, steps=40, seed=7)


# ---- JSON schema ------------------------------------------------------------------------------------


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer"},
        "height": {"type": "number"},
        "alive": {"type": "boolean"},
        "spouse": {"type": "null"},
        "role": {"enum": ["admin", "user", 7]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "home": {"$ref": "#/$defs/place"},
        "version": {"const": {"major": 1}},
    },
    "required": ["name", "age", "home"],
    "$defs": {
        "place": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                           "near": {"type": "array", "items": {"$ref": "#/$defs/place"}, "maxItems": 2}},
            "required": ["city"],
        }
    },
}

SCHEMAS = [
    PERSON,
    {"type": "array", "items": {"type": ["integer", "string", "null"], "minimum": 3, "maximum": 40}, "maxItems": 4},
    {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": [None, 1.5]}]},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}( \\(.+\\))?$"},
        "n": {"type": "integer", "minimum": -5, "exclusiveMaximum": 120},
        "when": {"type": "string", "format": "date"},
        "id": {"type": "string", "format": "uuid"}}, "required": ["code", "n", "when"]},
    {"allOf": [{"$ref": "#/$defs/a"}, {"anyOf": [{"$ref": "#/$defs/b"}]}],
     "$defs": {"a": {"properties": {"x": {"type": "integer", "minimum": 10}}},
               "b": {"properties": {"y": {"enum": ["p", "q"]}}}}},
    {},
]


def validate_target(schema: dict, root: dict) -> dict:
    """The schema itself, or what its $ref points at."""
    while "$ref" in schema:
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema


def validate(value, schema: dict, root: dict) -> None:
    """A minimal JSON Schema check of the keywords the converter supports; raises AssertionError."""
    if schema is True or schema == {}:
        return
    if "$ref" in schema:
        return validate(value, validate_target(schema, root), root)
    if "anyOf" in schema or "oneOf" in schema:
        errors = []
        for alt in schema.get("anyOf", schema.get("oneOf")):
            try:
                return validate(value, alt, root)
            except AssertionError as e:
                errors.append(e)
        raise AssertionError(f"{value!r} matches no alternative: {errors}")
    if "allOf" in schema:  # llama.cpp's reading: the components' properties, those under anyOf optional
        parts = [p for part in schema["allOf"] for p in part.get("anyOf", [part])]
        props = {k: v for p in parts for k, v in validate_target(p, root).get("properties", {}).items()}
        required = [k for p in schema["allOf"] if "anyOf" not in p
                    for k in validate_target(p, root).get("properties", {})]
        return validate(value, {"type": "object", "properties": props, "required": required}, root)
    if "const" in schema:
        assert value == schema["const"] and type(value) is type(schema["const"])
        return
    if "enum" in schema:
        assert any(value == v and type(value) is type(v) for v in schema["enum"]), value
        return
    kind = schema.get("type")
    if isinstance(kind, list):
        return validate(value, {"anyOf": [{**schema, "type": t} for t in kind]}, root)
    checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
              "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind is None:
        kind = "object" if "properties" in schema or "additionalProperties" in schema else \
            "array" if "items" in schema or "prefixItems" in schema else None
    if kind is not None:
        assert checks[kind](value), f"{value!r} is not {kind}"
    if kind == "object":
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), value
        extra = schema.get("additionalProperties", None if "properties" in schema else True)
        for k, v in value.items():
            if k in props:
                validate(v, props[k], root)
            else:
                assert extra not in (None, False), f"unexpected property {k!r}"
                validate(v, extra, root)
    elif kind == "array":
        items = schema.get("items", schema.get("prefixItems", {}))
        if isinstance(items, list):
            assert len(value) == len(items)
            for v, s in zip(value, items):
                validate(v, s, root)
        else:
            assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
            for v in value:
                validate(v, items, root)
    elif kind == "string":
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
        assert re.search(schema.get("pattern", ""), value), value
        formats = {"date": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
                   "uuid": r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"}
        assert re.fullmatch(formats.get(schema.get("format"), ".*"), value), value
    elif kind == "integer":
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), value
        assert schema.get("exclusiveMinimum", value - 1) < value < schema.get("exclusiveMaximum", value + 1)


def sample_json(sampler: GrammarSampler, tokenizer: Tokenizer, seed: int, budget: int = 60) -> str:
    """Random-logit sampling under the grammar; past the budget, closing tokens and EOS are favoured."""
    rng = np.random.default_rng(seed)
    closers = np.zeros(tokenizer.n_vocab, dtype=np.float32)
    for piece in [b'"', b"}", b"]", b"0", b"null", b"true", b"1", b'"}', b"a", b")"]:
        closers[tokenizer.pieces.index(piece)] = 50.0
    closers[tokenizer.eos] = 1000.0
    sampler.reset()
    out = []
    for step in range(budget + 300):
        logits = rng.standard_normal(tokenizer.n_vocab).astype(np.float32) * 3
        if step >= budget:
            logits += closers
        token = sampler(logits)
        sampler.accept(token)
        if token == tokenizer.eos:
            return b"".join(out).decode()
        out.append(tokenizer.pieces[token])
    raise AssertionError(f"no end of generation after {budget + 300} tokens: {b''.join(out)!r}")


def test_random_sampling_under_json_grammar_gives_json(tokenizer):
    sampler = GrammarSampler(Grammar.json(), tokenizer.pieces, tokenizer.eos, np.argmax)
    for seed in range(12):
        text = sample_json(sampler, tokenizer, seed)
        assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_random_sampling_under_schema_validates(schema, tokenizer):
    sampler = GrammarSampler(Grammar.from_json_schema(schema), tokenizer.pieces, tokenizer.eos, np.argmax)
    for seed in range(6):
        text = sample_json(sampler, tokenizer, seed)
        validate(json.loads(text), schema, schema)


def test_schema_grammar_shapes_follow_llama_cpp():
    gbnf = json_schema_to_gbnf({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"},
                                                                 "c": {"type": "boolean"}}, "required": ["a"]})
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert rules["root"] == '"{" space a-kv ( "," space ( b-kv b-rest | c-kv ) )? space "}"'
    assert rules["b-rest"] == '( "," space c-kv )?'
    assert rules["a-kv"] == '"\\"a\\"" space ":" space string'
    assert rules["space"] == '| " " | "\\n"{1,2} [ \\t]{0,20}'


SCHEMA_CASES = [c for c in CASES["cases"] if c["kind"] == "schema"]


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c["desc"] or "unnamed" for c in SCHEMA_CASES])
def test_integration_schema_strings(case):
    """llama.cpp's verdicts from test-grammar-integration.cpp, or an error naming what we lack."""
    schema = json.loads(case["body"])
    try:
        grammar = Grammar.from_json_schema(schema)
    except GrammarError as e:
        assert any(f"'{key}'" in str(e) for key in UNSUPPORTED), e
        return
    for text in case["passing"]:
        assert grammar.matches(text), text
    for text in case["failing"]:
        assert not grammar.matches(text), text


SCHEMA_TO_GRAMMAR = json.loads((DATA / "json_schema_to_grammar_cases.json").read_text())


def _rules(gbnf: str) -> list[str]:
    return sorted(line.strip() for line in gbnf.splitlines() if line.strip())


@pytest.mark.parametrize("case", SCHEMA_TO_GRAMMAR, ids=[c["name"] for c in SCHEMA_TO_GRAMMAR])
def test_schema_to_grammar_like_llama_cpp(case, tokenizer):
    """llama.cpp's expected grammars from tests/test-json-schema-to-grammar.cpp, rule for rule.

    Regular expressions are the exception: we spell string content as JSON does (a '"' in the
    pattern is '\\"' in the grammar, '.' excludes unescaped quotes), and refuse what we cannot
    convert instead of accepting any string; there the grammar's outputs must match the pattern.
    """
    schema = json.loads(case["schema"])
    if case["status"] == "FAILURE":
        with pytest.raises(GrammarError):
            json_schema_to_gbnf(schema)
        return
    if "pattern" not in case["schema"]:
        assert _rules(json_schema_to_gbnf(schema)) == _rules(case["grammar"])
        return
    try:
        grammar = Grammar.from_json_schema(schema)
    except GrammarError as e:
        assert "not supported" in str(e)
        return
    sampler = GrammarSampler(grammar, tokenizer.pieces, tokenizer.eos, np.argmax)
    for seed in range(3):
        text = sample_json(sampler, tokenizer, seed, budget=10)
        value = json.loads(text)
        for key, prop in ([(None, schema)] if "pattern" in schema else schema["properties"].items()):
            item = value if key is None else value.get(key)
            if item is not None and "pattern" in prop:
                assert re.search(prop["pattern"], item), (prop["pattern"], item)


@pytest.mark.parametrize("schema,keyword", [
    ({"type": "string", "pattern": "^(?=a)a+$"}, "lookarounds"),
    ({"type": "string", "pattern": "^a\\1$"}, "escape"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "number", "minimum": 3}, "minimum"),
    ({"not": {"type": "string"}}, "not"),
    ({"$ref": "https://example.com/s.json"}, "$ref"),
    ({"type": "tuple"}, "tuple"),
    ({"$ref": "#/$defs/missing"}, "missing"),
])
def test_unsupported_schema_feature_is_named(schema, keyword):
    with pytest.raises(GrammarError, match=keyword.replace("$", r"\$")):
        Grammar.from_json_schema(schema)


# ---- the sampler wrapper ----------------------------------------------------------------------------


def test_sampler_masks_then_accepts(tokenizer):
    grammar = Grammar.from_string('root ::= "ab" [0-9]')
    sampler = GrammarSampler(grammar, tokenizer.pieces, tokenizer.eos, np.argmax)
    logits = np.zeros(tokenizer.n_vocab, dtype=np.float32)
    logits[tokenizer.pieces.index(b"x")] = 10  # the sampler's favourite is not allowed
    logits[tokenizer.pieces.index(b"ab")] = 5
    token = sampler(logits)
    assert tokenizer.pieces[token] == b"ab"
    assert sampler.allowed_tokens()[tokenizer.pieces.index(b"a")]  # picking does not advance the grammar
    sampler.accept(token)
    assert not sampler.allowed_tokens()[tokenizer.eos] and not sampler.is_complete()
    logits[tokenizer.pieces.index(b"7")] = 8
    token = sampler(logits)
    assert tokenizer.pieces[token] == b"7"
    sampler.accept(token)
    assert np.flatnonzero(sampler.allowed_tokens()).tolist() == [tokenizer.eos]
    assert sampler(logits) == tokenizer.eos


def test_sampler_rejects_forbidden_tokens(tokenizer):
    sampler = GrammarSampler(Grammar.json(), tokenizer.pieces, tokenizer.eos, np.argmax)
    with pytest.raises(GrammarError, match="does not allow token"):
        sampler.accept(tokenizer.pieces.index(b"x"))
    with pytest.raises(GrammarError, match="end of generation"):
        sampler.accept(tokenizer.eos)
    with pytest.raises(GrammarError, match="logits"):
        sampler(np.zeros(5, dtype=np.float32))


@pytest.mark.parametrize("schema,message", [
    ("{not json", "not valid JSON"),
    (5, "must be an object"),
    ({"type": []}, "must not be empty"),
    ({"type": "array", "minItems": -1}, "non-negative integer"),
    ({"enum": []}, "non-empty array"),
    ({"anyOf": "x"}, "non-empty array"),
    ({"type": "string", "pattern": "^(ab$"}, "unbalanced"),
    ({"type": "integer", "minimum": "3"}, "must be a number"),
])
def test_malformed_schema_is_rejected(schema, message):
    with pytest.raises(GrammarError, match=message):
        json_schema_to_gbnf(schema)


def test_grammar_text_must_be_utf8_text():
    with pytest.raises(GrammarError, match="UTF-8"):
        Grammar.from_string(b'root ::= "\xff"')
    with pytest.raises(GrammarError, match="must be str"):
        Grammar.from_string(42)
    with pytest.raises(GrammarError, match="nests groups too deeply"):
        Grammar.from_string("root ::= " + "(" * 5000 + '"a"' + ")" * 5000)


def test_sampler_rejects_token_ids_outside_vocabulary(tokenizer):
    sampler = GrammarSampler(Grammar.json(), tokenizer.pieces, tokenizer.eos, np.argmax)
    with pytest.raises(GrammarError, match="outside the vocabulary"):
        sampler.accept(tokenizer.n_vocab)
    with pytest.raises(GrammarError, match="outside the vocabulary"):
        sampler.accept(-1)


def test_inner_sampler_that_ignores_the_mask_is_caught(tokenizer):
    sampler = GrammarSampler(Grammar.json(), tokenizer.pieces, tokenizer.eos, lambda logits: 0)
    token = sampler(np.zeros(tokenizer.n_vocab, dtype=np.float32))
    with pytest.raises(GrammarError, match="does not allow token 0"):
        sampler.accept(token)


class ReferenceChain:
    """llama.cpp's sampler chain with the grammar in llama-cpp-python's place: grammar, then the
    common samplers (top-k, typical-p, top-p, min-p, temperature, seeded draw) or greedy."""

    def __init__(self, vocab, gbnf: str, seed: int | None):
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        stages = [llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")]
        if seed is None:
            stages.append(llama_cpp.llama_sampler_init_greedy())
        else:
            stages += [llama_cpp.llama_sampler_init_top_k(40), llama_cpp.llama_sampler_init_typical(1.0, 1),
                       llama_cpp.llama_sampler_init_top_p(0.95, 1), llama_cpp.llama_sampler_init_min_p(0.05, 1),
                       llama_cpp.llama_sampler_init_temp(0.8), llama_cpp.llama_sampler_init_dist(seed)]
        for stage in stages:
            llama_cpp.llama_sampler_chain_add(self.chain, stage)

    def __call__(self, logits: np.ndarray) -> int:
        data = np.zeros(len(logits), dtype=TOKEN_DATA)
        data["id"] = np.arange(len(logits))
        data["logit"] = logits
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(logits), selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        token = int(array.data[array.selected].id)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)


@pytest.mark.parametrize("seed", [None, 1, 2, 3], ids=["greedy", "dist-1", "dist-2", "dist-3"])
def test_constrained_sampling_picks_the_tokens_llama_cpp_picks(seed, tokenizer, llama_vocab):
    """Same logits, same grammar, same sampler chain: the same tokens, step by step."""
    from engine.sampling import Chain, greedy
    inner = greedy if seed is None else Chain(seed=seed, min_keep=1)
    ours = GrammarSampler(Grammar.json(), tokenizer.pieces, tokenizer.eos, inner)
    ref = ReferenceChain(llama_vocab, JSON_GBNF, seed)
    rng = np.random.default_rng(100 + (seed or 0))
    try:
        for step in range(80):
            logits = (rng.standard_normal(tokenizer.n_vocab) * 3).astype(np.float32)
            expected = ref(logits)
            token = ours(logits)
            assert token == expected, f"step {step}"
            ours.accept(token)
            if token == tokenizer.eos:
                break
    finally:
        ref.close()


# ---- whole generation on a synthetic model, against llama-cpp-python with LlamaGrammar --------------


SMALL_MODEL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=128)
PIZZA = "Describe some pizza toppings using JSON."


@pytest.mark.parametrize("seed", [None, 7], ids=["greedy", "seeded-chain"])
def test_generation_with_json_grammar_matches_llama_cpp_python(seed, make_model):
    from llama_cpp.llama_grammar import LlamaGrammar

    from engine import Llama
    from engine.sampling import Chain, greedy
    path = make_model(**SMALL_MODEL)
    with Llama(path, n_ctx=128) as llm:
        prompt = llm.tokenize(PIZZA, add_bos=True)
        sampler = greedy if seed is None else Chain(seed=seed, min_keep=1)
        ours = list(llm.generate_tokens(prompt, sampler=sampler, grammar=Grammar.json(), max_tokens=24))
        eos = llm.eos
    ref = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, seed=seed or 0, flash_attn=False,
                          verbose=False)
    options = dict(temp=0.0) if seed is None else dict(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0)
    theirs = []
    for token in ref.generate(prompt, repeat_penalty=1.0, grammar=LlamaGrammar.from_string(JSON_GBNF, verbose=False),
                              **options):
        if token == eos or len(theirs) == 24:
            break
        theirs.append(token)
    assert ours == theirs
    json_grammar = Grammar.json()
    text = b"".join(Tokenizer.from_gguf(path).pieces[t] for t in ours)
    assert json_grammar.advance(json_grammar.start_state, text) != json_grammar.DEAD  # a JSON prefix
