"""Chat: conversations rendered into prompt text, and a ``Chat`` that keeps its KV cache warm.

A chat model was trained on conversations written in one fixed layout: where the
system prompt goes, how a user turn opens and closes, what marks the end of a
reply. A *chat format* turns a list of messages, ``{"role": ..., "content": ...}``
with roles ``system``, ``user`` and ``assistant``, into that text; with
``add_generation_prompt`` it also opens the assistant's turn, so the model's next
tokens are the reply.

Two kinds of format:

- The model's own ``tokenizer.chat_template`` (a Jinja template from the GGUF
  metadata, as Hugging Face writes them), rendered in a sandbox, because a model
  file is untrusted input. Chosen automatically when the metadata has one.
- Built-in formats in plain Python, named and written exactly as llama.cpp's
  ``llama_chat_apply_template`` writes them (``alpaca`` as llama-cpp-python does;
  llama.cpp has none). Without a template, a vocabulary that has ``<|im_start|>``
  gets ``chatml``, any other ``llama2-sys-bos``: LLaMA-2-chat's layout, with
  ``<<SYS>>`` and a BOS opening every later turn.

    with Llama("llama-2-7b-chat.Q4_0.gguf") as llm:
        chat = Chat(llm, system="You are a concise assistant.")
        chat.send("What is Clojure?")
        chat.send("Can I use it to write a web app?")   # evaluates only this turn
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import SecurityError

from .errors import LlamaError
from .generate import steps
from .template_sandbox import BoundedSandbox, check_widths, join_bounded, render_within_budget

if TYPE_CHECKING:
    from .llama import Llama
    from .tokenizer import Tokenizer

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}


class ChatTemplateError(LlamaError, ValueError):
    """A chat template cannot be compiled or rendered, or it rejected the conversation."""


@dataclass(frozen=True)
class ChatFormat:
    """A named way to write a conversation as prompt text.

    ``stop`` is the text that closes an assistant turn in this format; generation
    stops there (the reply is stored without it, and the format writes it back).
    """
    name: str
    render: Callable[[list[Message], bool], str]
    stop: tuple[str, ...]

    def __call__(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self.render(checked_messages(messages), add_generation_prompt)


def checked_messages(messages: Sequence[Message]) -> list[Message]:
    """Copies of the messages, each checked to have a text role and content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content' strings, got {message!r}")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


# ---- built-in formats: each writes the text llama.cpp's llama_chat_apply_template writes -------------------

def c_strip(text: str) -> str:
    """Strip the whitespace C's isspace knows (ASCII only: U+00A0 or U+3000 stay, as in llama.cpp)."""
    return text.strip(" \t\n\v\f\r")


def chatml(messages: list[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def zephyr(messages: list[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|endoftext|>\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def llama3(messages: list[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{c_strip(m['content'])}<|eot_id|>"
                   for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def llama2(messages: list[Message], add_generation_prompt: bool, *,
           system_tags: bool, bos_between_turns: bool, strip: bool) -> str:
    """``[INST] user [/INST]reply</s>[INST] ...``; the prompt always ends ready for the reply.

    system_tags: wrap a system message in ``<<SYS>>`` tags (else it is a line of its own).
    bos_between_turns: write ``<s>`` before every later ``[INST]`` (the first BOS is the tokenizer's).
    strip: strip whitespace around every message.
    """
    text, in_turn = "[INST] ", True
    for m in messages:
        content = c_strip(m["content"]) if strip else m["content"]
        if not in_turn:
            text += "<s>[INST] " if bos_between_turns else "[INST] "
            in_turn = True
        if m["role"] == "system":
            text += f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system_tags else content + "\n"
        elif m["role"] == "user":
            text += content + " [/INST]"
        else:
            text += content + "</s>"
            in_turn = False
    return text


def mistral(messages: list[Message], add_generation_prompt: bool, *,
            space_before: str, space_after: str, strip_replies: bool) -> str:
    """Mistral's v1/v3 layouts: ``[INST]`` opens a turn that a system message and the user share."""
    text, in_turn = "", False
    for m in messages:
        if not in_turn:
            text += f"{space_before}[INST]{space_after}"
            in_turn = True
        if m["role"] == "system":
            text += m["content"] + "\n\n"
        elif m["role"] == "user":
            text += f"{m['content']}{space_before}[/INST]"
        else:
            text += space_after + (c_strip(m["content"]) if strip_replies else m["content"]) + "</s>"
            in_turn = False
    return text


def mistral_v7(messages: list[Message], add_generation_prompt: bool, *, space: str) -> str:
    """Mistral's v7 layout, with ``[SYSTEM_PROMPT]`` tags."""
    text = ""
    for m in messages:
        if m["role"] == "system":
            text += f"[SYSTEM_PROMPT]{space}{m['content']}[/SYSTEM_PROMPT]"
        elif m["role"] == "user":
            text += f"[INST]{space}{m['content']}[/INST]"
        else:
            text += f"{space}{m['content']}</s>"
    return text


def gemma(messages: list[Message], add_generation_prompt: bool) -> str:
    """Gemma has no system role: system text joins the next user turn. Its assistant is "model"."""
    text, system = "", ""
    for m in messages:
        if m["role"] == "system":
            system += c_strip(m["content"])
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"<start_of_turn>{role}\n"
        if system and role != "model":
            text += system + "\n\n"
            system = ""
        text += c_strip(m["content"]) + "<end_of_turn>\n"
    return text + ("<start_of_turn>model\n" if add_generation_prompt else "")


def vicuna(messages: list[Message], add_generation_prompt: bool, *, system_prefix: bool) -> str:
    """``USER: ...`` / ``ASSISTANT: ...</s>`` lines; other roles are left out.

    system_prefix: write the system message as a ``SYSTEM:`` line (Orca-Vicuna).
    """
    text = ""
    for m in messages:
        if m["role"] == "system":
            text += f"SYSTEM: {m['content']}\n" if system_prefix else m["content"] + "\n\n"
        elif m["role"] == "user":
            text += f"USER: {m['content']}\n"
        elif m["role"] == "assistant":
            text += f"ASSISTANT: {m['content']}</s>\n"
    return text + ("ASSISTANT:" if add_generation_prompt else "")


def alpaca(messages: list[Message], add_generation_prompt: bool) -> str:
    """The system text, then ``### Instruction: ...`` and ``### Response: ...</s>`` (llama-cpp-python's)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    text = system + "\n\n"
    for m in messages:
        if m["role"] == "user":
            text += f"### Instruction: {m['content']}\n\n"
        elif m["role"] == "assistant":
            text += f"### Response: {m['content']}</s>"
    return text + ("### Response:" if add_generation_prompt else "")


BUILTIN_FORMATS = {f.name: f for f in (
    ChatFormat("chatml", chatml, ("<|im_end|>",)),
    ChatFormat("llama2", partial(llama2, system_tags=False, bos_between_turns=False, strip=False), ("</s>",)),
    ChatFormat("llama2-sys", partial(llama2, system_tags=True, bos_between_turns=False, strip=False), ("</s>",)),
    ChatFormat("llama2-sys-bos", partial(llama2, system_tags=True, bos_between_turns=True, strip=False),
               ("</s>",)),
    ChatFormat("llama2-sys-strip", partial(llama2, system_tags=True, bos_between_turns=False, strip=True),
               ("</s>",)),
    ChatFormat("mistral-v1", partial(mistral, space_before=" ", space_after=" ", strip_replies=False), ("</s>",)),
    ChatFormat("mistral-v3", partial(mistral, space_before="", space_after=" ", strip_replies=True), ("</s>",)),
    ChatFormat("mistral-v3-tekken", partial(mistral, space_before="", space_after="", strip_replies=False),
               ("</s>",)),
    ChatFormat("mistral-v7", partial(mistral_v7, space=" "), ("</s>",)),
    ChatFormat("mistral-v7-tekken", partial(mistral_v7, space=""), ("</s>",)),
    ChatFormat("zephyr", zephyr, ("<|endoftext|>",)),
    ChatFormat("llama3", llama3, ("<|eot_id|>",)),
    ChatFormat("gemma", gemma, ("<end_of_turn>",)),
    ChatFormat("vicuna", partial(vicuna, system_prefix=False), ("</s>",)),
    ChatFormat("vicuna-orca", partial(vicuna, system_prefix=True), ("</s>",)),
    ChatFormat("alpaca", alpaca, ("</s>",)),
)}


# ---- the model's own Jinja template ----------------------------------------------------------------------

class TemplateSandbox(BoundedSandbox):
    """Hugging Face's chat-template environment, as a sandbox that fails loudly.

    The sandbox blocks private attributes (``__class__``...) and changes to the
    messages, and bounds the work and memory of a render (``engine.template_sandbox``);
    here an unsafe attribute is an error rather than a silent blank.
    """

    def __init__(self):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols],
                         filters={"tojson": tojson},
                         globals={"raise_exception": raise_exception, "strftime_now": strftime_now})

    def unsafe_undefined(self, obj: Any, attribute: str):
        raise SecurityError(f"the template reads {type(obj).__name__}.{attribute}, which is unsafe")


def raise_exception(message: str):
    """What a template calls to reject a conversation (say, roles that do not alternate)."""
    raise ChatTemplateError(f"the chat template rejected the conversation: {message}")


def strftime_now(format: str) -> str:
    """Today's date for templates that print it (LLaMA-3.1's); the format's widths are checked first."""
    check_widths(format)
    return datetime.now().strftime(format)


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
           separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON as Hugging Face templates expect it: plain UTF-8, no HTML escaping (built piece by piece
    within the sandbox's size bound, as an indent can multiply the text)."""
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return join_bounded(encoder.iterencode(value))


def jinja_format(source: str, bos_token: str, eos_token: str) -> ChatFormat:
    """A chat format that renders the Jinja template ``source``; its stop text is ``eos_token`` (if any)."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"a chat template must be text, got {type(source).__name__}")
    try:
        template = TemplateSandbox().from_string(source)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from None
    except (RecursionError, SyntaxError) as e:  # nested deeper than Jinja's parser or Python's compiler go
        raise ChatTemplateError(f"the chat template does not compile: {type(e).__name__}: {e}") from None

    def render(messages: list[Message], add_generation_prompt: bool) -> str:
        try:
            return render_within_budget(template, messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=bos_token, eos_token=eos_token, tools=None)
        except ChatTemplateError:
            raise
        except Exception as e:  # the template is untrusted input: whatever it trips over is its error
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None

    return ChatFormat("jinja", render, (eos_token,) if eos_token else ())


def chat_format(metadata: dict, tokenizer: "Tokenizer", name: str | None = None) -> ChatFormat:
    """The format called ``name``; by default the model's template, else the one its vocabulary suggests."""
    if name is not None:
        if name not in BUILTIN_FORMATS:
            raise ValueError(f"unknown chat format {name!r}; choose from {', '.join(BUILTIN_FORMATS)}")
        return BUILTIN_FORMATS[name]
    template = metadata.get("tokenizer.chat_template")
    if template is not None:
        return jinja_format(template, token_text(tokenizer, tokenizer.bos), token_text(tokenizer, tokenizer.eos))
    if "<|im_start|>" in tokenizer.ids:
        return BUILTIN_FORMATS["chatml"]
    return BUILTIN_FORMATS["gemma" if "<start_of_turn>" in tokenizer.ids else "llama2-sys-bos"]


def token_text(tokenizer: "Tokenizer", token: int | None) -> str:
    return "" if token is None else tokenizer.tokens[token]


# ---- a conversation with a model ---------------------------------------------------------------------------

class Chat:
    """A conversation with ``llm``: each ``send`` renders the whole conversation, and
    generation evaluates only the tokens past what the KV cache already holds, so a
    follow-up costs its own turn, not the history.

    format: a built-in format's name (``BUILTIN_FORMATS``); by default the model's
    own template, or the format its vocabulary suggests (see ``chat_format``).
    """

    def __init__(self, llm: "Llama", system: str | None = None, format: str | None = None):
        if system is not None and not isinstance(system, str):
            raise TypeError(f"system must be text, got {type(system).__name__}")
        self.llm = llm
        self.system = system
        self.format = chat_format(llm.metadata, llm.tokenizer, format)
        self.messages: list[Message] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation, keeping the system message."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]

    def prompt_tokens(self, messages: Sequence[Message] | None = None) -> list[int]:
        """The tokens of the conversation (default: this one) ready for the assistant's reply.

        Control tokens written by the format (``</s>``, ``<|im_start|>``) are read as
        such; BOS comes first once, whether or not the format writes it.
        """
        text = self.format(self.messages if messages is None else messages, add_generation_prompt=True)
        tokenizer = self.llm.tokenizer
        writes_bos = tokenizer.bos is not None and text.startswith(token_text(tokenizer, tokenizer.bos))
        return self.llm.tokenize(text, add_bos=not writes_bos, special=True)

    def send(self, text: str, **options) -> str:
        """Add a user message and return the assistant's reply (also added to the conversation).

        options: those of ``engine.generate.steps`` (sampler, max_tokens, seed, stop,
        logit_bias, grammar, stop_at_context_end).
        """
        return "".join(self.stream(text, **options))

    def stream(self, text: str, stop: str | Sequence[str] | None = (), **options) -> Iterator[str]:
        """``send``, yielding the reply's text as it is generated.

        If the caller stops reading early, the reply so far joins the conversation;
        if generation fails (say the context is full), the conversation is unchanged.
        """
        turn = self.messages + [{"role": "user", "content": text}]
        tokens = self.prompt_tokens(turn)
        stops = [*self.format.stop, *([stop] if isinstance(stop, str) else stop or ())]
        reply = []
        try:
            for step in steps(self.llm, tokens, stop=stops, **options):
                reply.append(step.text)
                yield step.text
        except GeneratorExit:
            pass
        self.messages = turn + [{"role": "assistant", "content": "".join(reply)}]
