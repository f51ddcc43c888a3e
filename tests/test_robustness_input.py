"""Hostile input (issue #14): chat templates that would run forever or build gigabytes, JSON schemas
and grammars beyond what they can express, and logits and sampler settings without a meaning.

Each fails with one of the library's own errors, raised by the bound meant to catch it (the
messages are matched, so a MemoryError or a RecursionError would not pass for it).
"""
import subprocess
import sys

import llama_cpp as lc
import numpy as np
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from engine import sampling as S
from engine.chat import ChatTemplateError, jinja_format
from engine.errors import ArgumentError, GrammarError
from engine.grammar import Grammar
from engine.json_schema import json_schema_to_gbnf
from engine.llama import Llama
from tests.sampler_reference import random_logits, ref_chain

HI = [{"role": "user", "content": "hi"}]
STEPS = r"more than \d+ steps|longer than"
SIZE = r"more than \d+ characters"


def render(source: str, messages=HI) -> str:
    return jinja_format(source, "<s>", "</s>")(messages)


# ---- chat templates ------------------------------------------------------------------------------------------

def doubling(step: str, start: str = "'a'", times: int = 64) -> str:
    """A template that applies ``step`` (an expression of ``ns.x``) to ``ns.x`` ``times`` times."""
    return (f"{{% set ns = namespace(x={start}) %}}{{% for i in range({times}) %}}{{% set ns.x = {step} %}}"
            "{% endfor %}{{ ns.x|length }}")


@pytest.mark.parametrize("source, bound", [
    # the cases of the issue
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", STEPS),
    (doubling("ns.x ~ ns.x"), SIZE),
    (doubling("ns.x + ns.x"), SIZE),
    (doubling("ns.x + ns.x", start="[1]"), SIZE),
    ("{{ 'a'|center(10**9) }}", SIZE),
    ("{{ '{:>999999999}'.format('a') }}", SIZE),
    ("{{ '%0999999999d'|format(1) }}", SIZE),
    ("{{ 'a'|indent(10**9, true) }}", SIZE),
    # their relatives
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}", STEPS),
    (doubling("[ns.x, ns.x]", start="[1]") + "{{ ns.x }}", SIZE),
    (doubling("(ns.x, ns.x)", start="(1,)") + "{{ {ns.x: 1} }}", SIZE),
    (doubling("(ns.x, ns.x)", start="(1,)") + "{{ ns.x in [1] }}", SIZE),
    (doubling("[ns.x, ns.x]|join(ns.x)", times=40), SIZE),
    (doubling("{'a': ns.x, 'b': ns.x}", start="{}") + "{{ ns.x.items() }}", SIZE),
    ("{{ [2 ** 2000 * 2 ** 2000] * 1000000 }}", SIZE),
    ("{{ '%0999999999d' % 1 }}", SIZE),
    ("{{ '%*d' % (10**9, 1) }}", SIZE),
    ("{{ ('%(a)s' * 1000) % {'a': 'x' * 100000} }}", SIZE),
    ("{{ '{:>{}}'.format('a', 10**9) }}", SIZE),
    ("{{ '{:.999999999f}'.format(1.0) }}", SIZE),
    ("{{ '{x:>999999999}'.format_map({'x': 1}) }}", SIZE),
    ("{{ 'a'.ljust(10**9) }}", SIZE),
    ("{{ 'a'.zfill(10**9) }}", SIZE),
    ("{{ ('a'|safe).center(10**9) }}", SIZE),
    ("{{ '\t'.expandtabs(tabsize=10**9) }}", SIZE),
    ("{{ ('a' * 1000000).replace('a', 'bbbbb') }}", SIZE),
    ("{{ ('a' * 1000000)|replace('a', 'bbbbb') }}", SIZE),
    ("{{ ('a' * 4000).join(range(100000)|map('string')) }}", SIZE),
    ("{{ range(100000)|join('x' * 100) }}", SIZE),
    ("{{ ('a\n' * 100000)|indent(100) }}", SIZE),
    ("{{ ('a' * 10000)|wordwrap(1, wrapstring='x' * 1000) }}", SIZE),
    ("{{ [1]|batch(10**9, 0)|list }}", SIZE),
    ("{{ [1]|slice(10**8)|list }}", SIZE),
    ("{{ ([[1] * 2000] * 2000)|sum(start=[]) }}", SIZE),
    ("{{ [[1]]|tojson(indent=10**9) }}", SIZE),
    ("{{ strftime_now('%9999Y' * 400000) }}", SIZE),
    # what the sandbox leaves out
    ("{{ 'aaaa'.translate({97: 'x' * 1000}) }}", "str.translate, which is unsafe"),
    ("{{ (1).to_bytes(10**9, 'big') }}", "int.to_bytes, which is unsafe"),
    ("{{ 'a'.encode() }}", "str.encode, which is unsafe"),
    ("{{ '<!---->' * 500000|striptags }}", "No filter named 'striptags'"),
    ("{{ lipsum(10**9) }}", "'lipsum' is undefined"),
    # nested deeper than Jinja's parser or Python's compiler go
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "does not compile: RecursionError"),
    ("{% for a in [1] %}" * 30 + "{% endfor %}" * 30, "does not compile: SyntaxError"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "RecursionError"),
])
def test_template_beyond_the_bounds_is_a_chat_template_error(source, bound):
    with pytest.raises(ChatTemplateError, match=bound):
        render(source)


@pytest.mark.parametrize("source", [
    "{{ 'a'|center(1000)|length }}{{ '{:>1000}'.format('a')|length }}{{ '%01000d'|format(1)|length }}",
    "{{ ('a\n' * 100)|indent(100)|length }}{{ [1]|batch(1000, 0)|list|length }}{{ ([[1]] * 3)|sum(start=[]) }}",
    "{{ 2 ** 4000 % 7 }}{{ ('x' * 100000)|length }}{{ (range(100)|join(', '))|length }}",
])
def test_template_within_the_bounds_renders_as_jinja_does(source):
    expected = Jinja2ChatFormatter(source, eos_token="</s>", bos_token="<s>")(messages=HI).prompt
    assert render(source) == expected


def test_long_conversation_renders_as_llama_cpp_python_does(data_dir):
    source = (data_dir / "chat_templates" / "llama-3-instruct.jinja").read_text()
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 50} for i in range(3001)]
    expected = Jinja2ChatFormatter(source, eos_token="</s>", bos_token="<s>")(messages=messages).prompt
    assert render(source, messages) == expected


# ---- JSON schemas and grammars -------------------------------------------------------------------------------

def nested_arrays(depth: int) -> dict:
    schema = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def optional_properties(n: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)}}


@pytest.mark.parametrize("schema, message", [
    (nested_arrays(496), "nest more than 128 deep"),
    ({"$ref": "#/$defs/d0", "$defs": {**{f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(600)},
                                      "d600": {"type": "integer"}}}, "nest more than 128 deep"),
    (optional_properties(992), "more than 256 optional properties"),
    ({"type": "string", "pattern": "(" * 2000 + "a" + ")" * 2000}, "nests too deeply"),
    ({"type": "object", "properties": {"a" * 3000: {}}, "additionalProperties": {"type": "integer"}},
     "nests too deeply"),
    ('{"type": "integer", "maximum": 1e999}', "maximum: must be a number in"),
    ({"type": "integer", "minimum": float("-inf")}, "minimum: must be a number in"),
    ({"type": "integer", "exclusiveMaximum": float("nan")}, "exclusiveMaximum: must be a number in"),
    ({"type": "integer", "minimum": 2 ** 64}, "minimum: must be a number in"),
    ({"type": "array", "minItems": float("inf")}, "minItems: must be a non-negative integer"),
    ({"type": "string", "maxLength": float("nan")}, "maxLength: must be a non-negative integer"),
    ({"type": "string", "minLength": 5, "maxLength": 3}, "minLength 5 is above maxLength 3"),
    ({"type": "array", "minItems": 5, "maxItems": 3}, "minItems 5 is above maxItems 3"),
    ({"type": "integer", "minimum": 5, "maximum": 3}, "no integer lies between"),
    ({"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 6}, "no integer lies between"),
    ({"type": "integer", "minimum": 0.5, "maximum": 0.9}, "no integer lies between"),
    ({"type": "string", "pattern": "\\uD800"}, "surrogate"),
    ("[" * 100000 + "]" * 100000, "not valid JSON: RecursionError"),
    ('{"type": "integer", "minimum": 1' + "0" * 5000 + "}", "not valid JSON: ValueError"),
])
def test_schema_beyond_what_a_grammar_expresses_is_a_grammar_error(schema, message):
    with pytest.raises(GrammarError, match=message):
        json_schema_to_gbnf(schema)


def test_schema_at_the_limits_converts_to_a_grammar_that_matches():
    grammar = Grammar.from_json_schema(nested_arrays(127))
    assert grammar.matches("[" * 127 + "7" + "]" * 127) and not grammar.matches("[" * 128 + "7" + "]" * 128)
    grammar = Grammar.from_json_schema(optional_properties(256))
    assert grammar.matches('{"p3": 1, "p255": 2}') and not grammar.matches('{"p255": 2, "p3": 1}')


@pytest.mark.parametrize("gbnf", [
    'root ::= "\\U0011FFFF"', 'root ::= [\\U00110000]', 'root ::= [a-\\U00110000]',
    'root ::= "\\uD800"', 'root ::= [\\uDFFF]', 'root ::= "\ud800"',
])
def test_grammar_with_a_code_point_no_text_has_is_a_grammar_error(gbnf):
    with pytest.raises(GrammarError, match="not a Unicode character"):
        Grammar.from_string(gbnf)


def test_grammar_of_a_long_chain_of_rules_builds_in_one_pass():
    """Each rule of the chain is productive only once the next one is (finding that took one pass
    over all the rules per link: minutes for this chain)."""
    n = 20000
    grammar = Grammar.from_string("root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n))
                                  + f'r{n} ::= "a"\n')
    assert grammar.matches("a") and not grammar.matches("b")


def test_grammar_may_span_every_code_point():
    grammar = Grammar.from_string('root ::= [\\x00-\\U0010FFFF]+')
    assert grammar.matches("a\ud7ff\ue000\U0010ffff")


# ---- samplers ------------------------------------------------------------------------------------------------

SAMPLERS = {
    "greedy": lambda n: S.greedy,
    "chain": lambda n: S.Chain(seed=3),
    "chain, top_k=0 top_p=1 min_p=0": lambda n: S.Chain(seed=3, top_k=0, top_p=1.0, min_p=0.0),
    "chain, typical_p=0.9": lambda n: S.Chain(seed=3, typical_p=0.9),
    "mirostat_v2": lambda n: S.MirostatV2(seed=3),
    "mirostat_v1": lambda n: S.MirostatV1(n, seed=3),
}
NO_TOKEN = "every logit is -inf"


@pytest.mark.parametrize("n_vocab", [40, 2000])
@pytest.mark.parametrize("make", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_when_every_token_is_banned_a_sampler_raises(make, n_vocab):
    with pytest.raises(ArgumentError, match=NO_TOKEN):
        make(n_vocab)(np.full(n_vocab, -np.inf, np.float32))


def test_when_a_logit_bias_bans_every_token_the_chain_raises():
    with pytest.raises(ArgumentError, match=NO_TOKEN):
        S.Chain(seed=3, logit_bias={i: -np.inf for i in range(40)})(np.zeros(40, np.float32))


@pytest.mark.parametrize("n_vocab", [40, 2000])
@pytest.mark.parametrize("make", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_an_infinite_logit_forces_its_token_every_time(make, n_vocab):
    """llama.cpp's f32 softmax makes +inf a NaN, after which some settings pick the last candidate
    or a random one; here the first +inf logit is the pick, as greedy takes it in llama.cpp too."""
    sampler = make(n_vocab)
    for seed in range(8):
        logits = np.random.default_rng(seed).standard_normal(n_vocab).astype(np.float32)
        logits[[9, 5]] = np.inf
        assert sampler(logits) == 5


def test_an_infinite_logit_bias_forces_its_token_in_the_chain():
    chain = S.Chain(seed=3, top_k=0, top_p=1.0, min_p=0.0, logit_bias={17: np.inf})
    assert [chain(np.random.default_rng(s).standard_normal(2000)) for s in range(8)] == [17] * 8


def test_forced_token_draws_what_llama_cpp_draws_so_later_picks_agree(llama):
    """The default chain over 40 tokens picks a +inf logit in llama.cpp too; before and after it,
    every pick is llama.cpp's, so the forced step drew the one random number llama.cpp draws."""
    ours = S.Chain(seed=11)
    ref = ref_chain(llama, (lc.llama_sampler_init_penalties, 40, 64, 1.0, 0.0, 0.0),
                    (lc.llama_sampler_init_top_k, 40), (lc.llama_sampler_init_typical, 1.0, 0),
                    (lc.llama_sampler_init_top_p, 0.95, 0), (lc.llama_sampler_init_min_p, 0.05, 0),
                    (lc.llama_sampler_init_temp_ext, 0.8, 0.0, 1.0), (lc.llama_sampler_init_dist, 11))
    for step in range(30):
        logits = random_logits(step, 40)
        if step % 7 == 3:
            logits[step] = np.inf
        token = ours(logits)
        assert token == ref.pick(logits) == (step if step % 7 == 3 else token), f"step {step}"
        ours.accept(token)
        ref.accept(token)


def test_log_softmax_of_infinite_logits_is_their_limit_not_nan():
    np.testing.assert_array_equal(S.log_softmax([np.inf, 0.0]), [0.0, -np.inf])
    np.testing.assert_allclose(S.log_softmax([np.inf, 1.0, np.inf]), [np.log(0.5), -np.inf, np.log(0.5)])
    np.testing.assert_array_equal(S.probabilities([[np.inf, 0.0], [0.0, -np.inf]]), [[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ArgumentError, match=NO_TOKEN):
        S.log_softmax([-np.inf, -np.inf])


@pytest.mark.parametrize("make, message", [
    (lambda: S.Chain(repeat_penalty=float("nan")), "repeat_penalty"),
    (lambda: S.Chain(repeat_penalty=float("inf")), "repeat_penalty"),
    (lambda: S.Chain(frequency_penalty=float("nan")), "frequency_penalty"),
    (lambda: S.Chain(presence_penalty=float("nan")), "presence_penalty"),
    (lambda: S.Chain(presence_penalty=-float("inf")), "presence_penalty"),
    (lambda: S.Chain(penalty_last_n=True), "penalty_last_n"),
    (lambda: S.Chain(penalty_last_n=2.5), "penalty_last_n"),
    (lambda: S.Chain(top_k=True), "top_k"),
    (lambda: S.Chain(logit_bias={3: True}), "logit_bias"),
    (lambda: S.MirostatV2(eta=float("inf")), "eta"),
    (lambda: S.MirostatV1(True), "n_vocab"),
    (lambda: S.make_sampler("beam"), "unknown sampler"),
    (lambda: S.greedy([0.0, np.nan]), "NaN"),
])
def test_sampler_settings_without_a_meaning_are_argument_errors(make, message):
    with pytest.raises(ArgumentError, match=message):
        make()


# ---- integer arguments and the command line ------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm(make_model):
    with Llama(make_model(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=64)) as llm:
        yield llm


@pytest.mark.parametrize("call", [
    lambda llm: llm.update([1], n_past=True),
    lambda llm: llm.eval_logits([1], n_past=np.bool_(False)),
    lambda llm: llm.update([1], n_past=1.0),
    lambda llm: list(llm.generate([1, 2], max_tokens=True)),
    lambda llm: list(llm.generate([1, 2], max_tokens=2.0)),
    lambda llm: list(llm.generate([1, 2], max_tokens=1, top_logprobs=True)),
    lambda llm: list(llm.generate([1, 2], max_tokens=1, top_logprobs=-1)),
])
def test_bools_and_floats_are_not_counts(llm, call):
    with pytest.raises(ArgumentError):
        call(llm)


def test_numpy_integers_are_counts(llm):
    llm.update([1, 2, 3], n_past=np.int64(0))
    llm.update([4], n_past=np.int32(2))
    assert llm.cached_tokens == [1, 2, 4]
    steps = list(llm.steps([1, 2], sampler=S.greedy, max_tokens=np.int64(2), top_logprobs=np.uint8(2)))
    assert 1 <= len(steps) <= 2 and all(len(step.top) == 2 for step in steps)


def test_cli_top_refuses_a_negative_count():
    out = subprocess.run([sys.executable, "-m", "engine", "top", "-k", "-1", "hello"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""  # argparse's status for a refused option
    assert out.stderr.strip() == "llamanp top: error: argument -k: must be at least 1, got -1 (see llamanp top --help)"
