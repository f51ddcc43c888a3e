"""Chat formats against llama.cpp's llama_chat_apply_template (ctypes), Jinja chat templates against
llama-cpp-python's Jinja2ChatFormatter, the template sandbox, and the Chat's KV-cache reuse."""
import ctypes
import itertools

import llama_cpp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_cpp.llama_chat_format import Jinja2ChatFormatter, format_alpaca

from engine.chat import BUILTIN_FORMATS, Chat, ChatTemplateError, chat_format, jinja_format
from engine.generate import steps
from engine.gguf import read_gguf
from engine.llama import Llama
from engine.tokenizer import Tokenizer

LLAMA_CPP_FORMATS = sorted(set(BUILTIN_FORMATS) - {"alpaca"})  # llama.cpp has no alpaca; llama-cpp-python does


def llama_cpp_apply(name: str, messages: list[dict], add_ass: bool) -> str:
    """llama.cpp's own rendering of ``messages`` in its built-in template ``name``."""
    chat = (llama_cpp.llama_chat_message * max(len(messages), 1))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages])
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), add_ass, None, 0)
    assert n >= 0, f"llama.cpp does not know the template {name!r}"
    buf = ctypes.create_string_buffer(n + 1)
    assert llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), add_ass, buf, n + 1) == n
    return buf.raw[:n].decode()


def system(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = [
    [],
    [user("Hello")],
    [system("You are a helpful assistant."), user("What is Clojure?")],
    [system("Be terse."), user("Hi"), assistant(" Hello! How can I help?"), user("Can I use it to write a web app?")],
    [user("Hi"), assistant("Hey"), user("Bye"), assistant("See you")],
    [system("  padded system \n"), user("\t spaced user\n"), assistant("\n spaced reply  "), user(" again ")],
    [system("Réponds en français 🦙"), user("¿Qué tal? 日本語\u3000"),
     assistant("\u00a0très bien\u00a0"), user("😀")],
    [user(""), assistant(""), user("")],
    [system("one"), system("two"), user("u")],
]

# text biased towards the edges of C's isspace and Unicode's wider whitespace, where trimming could differ
TEXT = st.text(st.one_of(st.sampled_from(" \t\n\v\f\r\u00a0\u3000\x1c\x85\u2028"),
                         st.characters(exclude_categories=("Cs",), exclude_characters="\x00")), max_size=12)
ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
MESSAGES = st.lists(st.builds(lambda role, content: {"role": role, "content": content}, ROLES, TEXT), max_size=6)


# ---- built-in formats vs llama.cpp --------------------------------------------------------------------------

def test_builtin_names_are_llama_cpp_names():
    n = llama_cpp.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    llama_cpp.llama_chat_builtin_templates(names, n)
    assert set(LLAMA_CPP_FORMATS) <= {name.decode() for name in names}


@pytest.mark.parametrize("name", LLAMA_CPP_FORMATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_builtin_format_matches_llama_cpp(name, add_generation_prompt, messages):
    assert BUILTIN_FORMATS[name](messages, add_generation_prompt) == \
        llama_cpp_apply(name, messages, add_generation_prompt)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(LLAMA_CPP_FORMATS), messages=MESSAGES, add_generation_prompt=st.booleans())
def test_builtin_format_matches_llama_cpp_on_any_messages(name, messages, add_generation_prompt):
    assert BUILTIN_FORMATS[name](messages, add_generation_prompt) == \
        llama_cpp_apply(name, messages, add_generation_prompt)


def alternating(pairs, system_text, last_user):
    """An optional system message, (user, assistant) pairs, then a last user message."""
    messages = [system(system_text)] if system_text else []
    for question, answer in pairs:
        messages += [user(question), assistant(answer)]
    return messages + [user(last_user)]


NONEMPTY = TEXT.filter(bool)


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(NONEMPTY, NONEMPTY), max_size=3), system_text=st.one_of(st.just(""), NONEMPTY),
       last_user=NONEMPTY, add_generation_prompt=st.booleans())
def test_alpaca_matches_llama_cpp_python(pairs, system_text, last_user, add_generation_prompt):
    messages = alternating(pairs, system_text, last_user)
    # llama-cpp-python writes the open response of an assistant message without content
    reference = format_alpaca(messages + [{"role": "assistant", "content": None}] * add_generation_prompt)
    assert BUILTIN_FORMATS["alpaca"](messages, add_generation_prompt) == reference.prompt


@pytest.mark.parametrize("bad", ["hello", [{"role": "user"}], [{"role": "user", "content": 3}], [("user", "x")]])
def test_malformed_messages_are_type_errors(bad):
    with pytest.raises(TypeError):
        BUILTIN_FORMATS["chatml"](bad)


# ---- Jinja templates vs llama-cpp-python ------------------------------------------------------------------

TEMPLATES = ["llama-2-chat", "chatml", "zephyr", "mistral-instruct", "gemma-it", "llama-3-instruct", "tool-json",
             "phi-3", "qwen2", "command-r"]  # the last three as llama.cpp's ggml-vocab-*.gguf carry them
JINJA_CONVERSATIONS = [c for c in CONVERSATIONS if c] + [
    [user('say "hi" <b>&</b>'), assistant("{'x': 1}"), user("\\n")]]


def template_source(data_dir, name):
    return (data_dir / "chat_templates" / f"{name}.jinja").read_text()


def reference_render(source, messages, add_generation_prompt):
    """llama-cpp-python's rendering; a template's raise_exception comes out as ValueError(message)."""
    formatter = Jinja2ChatFormatter(source, eos_token="</s>", bos_token="<s>",
                                    add_generation_prompt=add_generation_prompt)
    try:
        return formatter(messages=messages).prompt
    except ValueError as e:
        return e


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", JINJA_CONVERSATIONS)
def test_jinja_template_matches_llama_cpp_python(data_dir, name, add_generation_prompt, messages):
    source = template_source(data_dir, name)
    expected = reference_render(source, messages, add_generation_prompt)
    ours = jinja_format(source, bos_token="<s>", eos_token="</s>")
    if isinstance(expected, ValueError):
        with pytest.raises(ChatTemplateError, match=str(expected).split("...")[0]):
            ours(messages, add_generation_prompt)
    else:
        assert ours(messages, add_generation_prompt) == expected


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(TEMPLATES), pairs=st.lists(st.tuples(TEXT, TEXT), max_size=3),
       last_user=TEXT, add_generation_prompt=st.booleans())
def test_jinja_template_matches_llama_cpp_python_on_any_text(data_dir, name, pairs, last_user,
                                                           add_generation_prompt):
    source = template_source(data_dir, name)
    messages = alternating(pairs, "", last_user)
    assert jinja_format(source, "<s>", "</s>")(messages, add_generation_prompt) == \
        reference_render(source, messages, add_generation_prompt)


@pytest.mark.parametrize("source", [
    "{{ ().__class__.__bases__ }}",
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",
    "{{ messages[0].update({'content': 'x'}) }}",
    "{{ 'a' * 10 ** 12 }}",
    "{{ [0] * 10 ** 9 }}",
    "{{ (9 ** 9) ** (9 ** 9) }}",
    "{% for i in range(10 ** 9) %}{% endfor %}",
])
def test_sandbox_blocks_unsafe_templates(source):
    with pytest.raises(ChatTemplateError):
        jinja_format(source, "<s>", "</s>")([user("hi")])


def test_sandbox_allows_what_templates_need():
    source = "{{ 'ab' * 3 }}{{ 2 ** 10 }}{{ messages[0]['content'] | upper }}{{ messages | length }}"
    assert jinja_format(source, "<s>", "</s>")([user("hi")]) == "ababab1024HI1"


def test_raise_exception_carries_the_template_message():
    fmt = jinja_format("{{ raise_exception('only ' ~ messages[0].role ~ ' turns, please') }}", "<s>", "</s>")
    with pytest.raises(ChatTemplateError, match="only user turns, please"):
        fmt([user("hi")])


@pytest.mark.parametrize("source", ["{% if %}", "{{ messages[0] ", "{% for m in messages %}", "{% generation %}"])
def test_template_that_does_not_compile(source):
    with pytest.raises(ChatTemplateError, match="does not compile"):
        jinja_format(source, "<s>", "</s>")


@pytest.mark.parametrize("source", ["{{ 1 / 0 }}", "{{ 'a' + 1 }}", "{{ messages[5]['content'].strip() }}"])
def test_template_runtime_failures_are_chat_template_errors(source):
    with pytest.raises(ChatTemplateError, match="failed"):
        jinja_format(source, "<s>", "</s>")([user("hi")])


# ---- choosing a format ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocab(vocab_path):
    metadata = read_gguf(vocab_path).metadata
    return metadata, Tokenizer.from_metadata(metadata)


def test_model_template_is_chosen_with_its_bos_and_eos(vocab, data_dir):
    metadata, tokenizer = vocab
    source = template_source(data_dir, "llama-2-chat")
    fmt = chat_format({**metadata, "tokenizer.chat_template": source}, tokenizer)
    messages = [system("S"), user("Hi"), assistant("Yo"), user("Again")]
    assert fmt.name == "jinja" and fmt.stop == ("</s>",)
    assert fmt(messages) == reference_render(source, messages, True)


def test_named_format_overrides_the_template(vocab, data_dir):
    metadata, tokenizer = vocab
    with_template = {**metadata, "tokenizer.chat_template": template_source(data_dir, "chatml")}
    assert chat_format(with_template, tokenizer, "llama3") is BUILTIN_FORMATS["llama3"]
    with pytest.raises(ValueError, match="unknown chat format"):
        chat_format(metadata, tokenizer, "llama-9")


def test_default_format_follows_the_vocabulary(vocab):
    metadata, tokenizer = vocab
    assert chat_format(metadata, tokenizer) is BUILTIN_FORMATS["llama2-sys-bos"]
    chatml_vocab = {**metadata, "tokenizer.ggml.tokens": metadata["tokenizer.ggml.tokens"] + ["<|im_start|>"],
                    "tokenizer.ggml.scores": np.append(metadata["tokenizer.ggml.scores"], 0.0),
                    "tokenizer.ggml.token_type": np.append(metadata["tokenizer.ggml.token_type"], 3)}
    assert chat_format(chatml_vocab, Tokenizer.from_metadata(chatml_vocab)) is BUILTIN_FORMATS["chatml"]


# ---- Chat on a model --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(make_model):
    return make_model(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, ffn=128, n_ctx=512)


@pytest.fixture
def llm(model_path):
    with Llama(model_path) as llm:
        yield llm


class Script:
    """A sampler that plays back given token ids, recording the logits it is shown."""

    def __init__(self, tokens):
        self.tokens = iter(tokens)
        self.seen = []

    def __call__(self, logits):
        self.seen.append(logits.copy())
        return next(self.tokens)


def reply_tokens(chat, messages, reply):
    """The ids ``reply`` has inside the rendered conversation, so that replaying them leaves the cache
    exactly as a fresh tokenization of the next turn expects; then the format's closing tokens."""
    before = chat.prompt_tokens(messages)
    after = chat.llm.tokenize(chat.format(messages + [assistant(reply)], add_generation_prompt=False),
                              add_bos=True, special=True)
    assert after[:len(before)] == before
    return after[len(before):]


def test_follow_up_evaluates_only_the_new_turn(llm):
    chat = Chat(llm, system="You are a concise assistant.")
    first = [*chat.messages, user("What is Clojure?")]
    ids = reply_tokens(chat, first, " A Lisp on the JVM.")
    assert ids[-1] == llm.eos
    assert chat.send("What is Clojure?", sampler=Script(ids)) == " A Lisp on the JVM."
    assert chat.messages == first + [assistant(" A Lisp on the JVM.")]
    n_first = len(chat.prompt_tokens(first))
    assert llm.n_evaluated == n_first + len(ids) - 1  # the prompt, then every reply token but the last (EOS)

    second = [*chat.messages, user("Can I use it to write a web app?")]
    full = chat.prompt_tokens(second)
    new_turn = full[n_first + len(ids) - 1:]  # EOS closing the reply, then the new user turn
    assert new_turn[0] == llm.eos and len(new_turn) < len(full) / 2
    before = llm.n_evaluated
    script = Script([llm.eos])
    assert chat.send("Can I use it to write a web app?", sampler=script) == ""
    assert llm.n_evaluated - before == len(new_turn)
    with Llama(llm.path) as fresh:  # and the model saw the whole conversation
        np.testing.assert_allclose(script.seen[0], fresh.get_logits(full), rtol=1e-5, atol=1e-5)


def test_format_stop_and_user_stop_end_the_reply(llm):
    chat = Chat(llm, format="chatml")  # a llama vocabulary spells <|im_end|> as plain text
    ids = reply_tokens(chat, [user("What is Clojure?")], " A Lisp on the JVM.")
    assert chat.send("What is Clojure?", sampler=Script(ids)) == " A Lisp on the JVM."
    ids = reply_tokens(chat, [*chat.messages, user("More?")], " A Lisp on the JVM.")
    assert chat.send("More?", sampler=Script(ids), stop=["Lisp"]) == " A "
    assert chat.messages[-1] == assistant(" A ")


def test_jinja_format_without_eos_has_no_stop_text():
    assert jinja_format("{{ messages }}", "", "").stop == ()


def test_chat_reply_is_what_generation_gives_on_the_rendered_prompt(llm, model_path):
    chat = Chat(llm, format="chatml")
    reply = chat.send("Hello there", max_tokens=8, seed=3)
    with Llama(model_path) as fresh:
        tokens = fresh.tokenize("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
                                add_bos=True, special=True)
        assert reply == "".join(s.text for s in steps(fresh, tokens, max_tokens=8, seed=3, stop="<|im_end|>"))
    assert chat.messages == [user("Hello there"), assistant(reply)]


def test_stream_stopped_early_keeps_the_partial_reply(llm, model_path):
    chat = Chat(llm)
    stream = chat.stream("Tell me a story", max_tokens=8, seed=1)
    taken = "".join(itertools.islice(stream, 3))
    assert chat.messages == []  # still generating: nothing recorded yet
    stream.close()
    assert chat.messages == [user("Tell me a story"), assistant(taken)]
    with Llama(model_path) as fresh:
        assert Chat(fresh).send("Tell me a story", max_tokens=8, seed=1).startswith(taken)


def test_failed_turn_leaves_the_conversation_unchanged(llm):
    chat = Chat(llm, system="Hi")
    with pytest.raises(ValueError):
        chat.send("x " * 600)  # more tokens than n_ctx=512
    assert chat.messages == [system("Hi")]
    with pytest.raises(TypeError):
        chat.send(b"bytes")


def test_reset_keeps_the_system_message(llm):
    chat = Chat(llm, system="Be brief.", format="llama2-sys")
    chat.send("Hi", max_tokens=2, seed=0)
    chat.reset()
    assert chat.messages == [system("Be brief.")]


def test_template_that_writes_bos_gets_one_bos(llm, data_dir):
    llm.metadata["tokenizer.chat_template"] = template_source(data_dir, "llama-2-chat")
    try:
        chat = Chat(llm, system="S")
    finally:
        del llm.metadata["tokenizer.chat_template"]
    tokens = chat.prompt_tokens([*chat.messages, user("Hi")])
    assert tokens[0] == llm.bos and tokens[1] != llm.bos
    assert tokens == llm.tokenize(reference_render(template_source(data_dir, "llama-2-chat"),
                                                   [system("S"), user("Hi")], True), add_bos=False, special=True)
