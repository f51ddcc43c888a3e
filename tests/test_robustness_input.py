"""Hostile input (issue #14): chat templates that would run forever or build gigabytes, JSON schemas
and grammars beyond what they can express, and logits and sampler settings without a meaning.

Each fails with one of the library's own errors, raised by the bound meant to catch it (the
messages are matched, so a MemoryError or a RecursionError would not pass for it).
"""
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from engine.chat import ChatTemplateError, jinja_format

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
