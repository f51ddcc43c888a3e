"""A Jinja sandbox for chat templates that bounds the work and the memory a template may use.

A chat template comes from the model file, so it is untrusted input. Jinja's
own sandbox stops a template reading Python's internals, but not from working
forever (``{% for i in range(10**5) %}{% for j in range(10**5) %}``) or from
building a string of gigabytes (``'a'|center(10**9)``, or doubling ``s ~ s``
in a loop). Here every render carries a ``Budget``:

- work: every call, attribute or item lookup, operator, comparison, printed
  value and loop iteration is a step; a render may take ``MAX_STEPS`` of them
  and run ``MAX_SECONDS``;
- size: no value a template handles may spell out more than ``MAX_LENGTH``
  characters or items, shared parts counted as often as they appear (a list
  doubled through references, ``[l, l]``, is as big as its printout). What an
  operation would build is checked *before* it is built: its inputs plus what
  it adds (``FILTER_GROWTH``, ``METHOD_GROWTH``: the widths of ``center`` or
  ``indent``, the numbers in a ``%`` or ``format`` spec, the copies ``replace``
  and ``join`` make); every result is checked too.

The rest of what a template can call returns a few times its input's size at
most. Left out are the filters and methods that do not: ``lipsum``, ``pprint``,
``urlize``, ``striptags`` (quadratic in its tags), ``str.translate`` (a
character to any text), ``int.to_bytes`` and ``str.encode`` (bytes, whose
methods would need bounds of their own). No chat template uses them.

Going over a bound raises jinja2's SecurityError, which the chat format reports
as a ChatTemplateError.
"""
from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from functools import update_wrapper, wraps
from typing import Any, Callable, Iterable, Iterator

import jinja2
from jinja2 import nodes
from jinja2.runtime import Namespace
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from jinja2.visitor import NodeTransformer
from markupsafe import EscapeFormatter, Markup

MAX_LENGTH = 1 << 22    # most characters or items one value may spell out (a 4 Mi-character prompt is ~1M tokens)
MAX_STEPS = 1_000_000   # most steps one render may take (a long conversation takes tens of thousands)
MAX_SECONDS = 1.0       # longest one render may run (real templates take milliseconds)
MAX_INT_BITS = 4096     # largest integer a template may build with `*` or `**`

LEFT_OUT_FILTERS = ("pprint", "urlize", "striptags")
LEFT_OUT_METHODS = frozenset({"translate", "to_bytes", "encode"})


class Budget:
    """What one render has spent (steps, time), and the sizes it has measured.

    Measured collections (lists, tuples, dicts and their views, ranges) are kept
    alive in ``sizes`` so that their ids stay theirs for the render; the sandbox
    lets no template change one, so a size once measured stays true. Namespaces
    can change and are measured afresh.
    """

    def __init__(self):
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS
        self.sizes: dict[int, tuple[int, Any]] = {}

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SecurityError(f"the template takes more than {MAX_STEPS} steps")
        if time.monotonic() > self.deadline:
            raise SecurityError(f"the template runs longer than {MAX_SECONDS} s")

    def size(self, value: Any) -> int:
        """Characters (of text and numbers) plus items (of containers) ``value`` spells out;
        past MAX_LENGTH the count stops early."""
        if isinstance(value, str):
            return len(value)
        if isinstance(value, int):
            return 1 + value.bit_length() // 3  # at least its decimal digits
        if isinstance(value, Namespace):
            return self.items_size(value._Namespace__attrs.items())
        if not isinstance(value, Collection):
            return 1
        known = self.sizes.get(id(value))
        if known is None:
            known = self.remember(value, self.items_size(value.items() if isinstance(value, Mapping) else value))
        return known[0]

    def items_size(self, items: Iterable) -> int:
        total = 1
        for item in items:
            total += self.size(item)
            if total > MAX_LENGTH:
                break
        return total

    def remember(self, value: Any, size: int) -> tuple[int, Any]:
        """Record ``size`` (or a bound on it) as the size of the container ``value``."""
        self.sizes[id(value)] = size, value
        return size, value

    def check(self, *values: Any, extra: int = 0) -> int:
        """The size of ``values`` plus ``extra`` characters, or SecurityError if that exceeds MAX_LENGTH."""
        total = extra + sum(map(self.size, values))
        if total > MAX_LENGTH:
            raise SecurityError(f"the template builds a value of more than {MAX_LENGTH} characters or items")
        return total


BUDGET: ContextVar[Budget] = ContextVar("template_budget")


def budget() -> Budget:
    """The running render's budget. Outside a render this raises LookupError, which keeps Jinja
    from calling filters on constants at compile time, out of the budget's sight."""
    return BUDGET.get()


def render_within_budget(template: jinja2.Template, **variables) -> str:
    """``template.render(**variables)`` within a fresh Budget."""
    token = BUDGET.set(Budget())
    try:
        return template.render(**variables)
    finally:
        BUDGET.reset(token)


def print_value(value: Any) -> Any:
    """The sandbox's ``finalize``: each printed value is a step and is checked (constants
    that Jinja prints at compile time are as small as the template's source)."""
    spent = BUDGET.get(None)
    if spent is not None:
        spent.tick()
        spent.check(value)
    return value


def join_bounded(pieces: Iterable[str]) -> str:
    """Pieces of text joined, refusing to hold more than MAX_LENGTH characters."""
    held, total = [], 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_LENGTH:
            raise SecurityError(f"the template writes more than {MAX_LENGTH} characters")
        held.append(piece)
    return "".join(held)


# ---- what an operation adds beyond its inputs ----------------------------------------------------------------

NUMBER = re.compile(r"0*(\d{1,12})")  # past 12 digits a width is too big anyway


def format_widths(text: str) -> int:
    """The sum of the numbers in a format spec (``%``, ``str.format``, ``strftime``): a bound on
    what its widths and precisions add."""
    return sum(int(n) for n in NUMBER.findall(text))


def check_widths(text: str) -> None:
    """Refuse a format spec whose widths alone would spell out more than MAX_LENGTH characters."""
    budget().check(text, extra=format_widths(text))


def printf_growth(text: Any, args: Any) -> int:
    """A bound on what ``text % args`` adds: the widths in text (``*`` ones read from args),
    and a mapping printed once per field."""
    if not isinstance(text, str):
        return 0
    values = args if isinstance(args, tuple) else (args,)
    stars = sum(abs(v) for v in values if isinstance(v, int)) if "*" in text else 0
    mapped = text.count("%") * budget().size(args) if isinstance(args, dict) else 0
    return format_widths(text) + stars + mapped


def _count(value: Any) -> int:
    return abs(value) if isinstance(value, int) else 0


def _lines(text: Any) -> int:
    return text.count("\n") + 1 if isinstance(text, str) else 1


def _width(width: Any) -> int:
    """The characters an indent of ``width`` (a count or a string) writes."""
    return len(width) if isinstance(width, str) else _count(width)


def _replace_growth(text: Any, old: Any, new: Any) -> int:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        return (text.count(old) if old else len(text) + 1) * len(new)
    return 0


def _sum_growth(items: list, start: Any) -> int:
    """Summing sequences builds every partial sum on the way."""
    return 0 if isinstance(start, (int, float)) else len(items) * budget().size(items)


# filter name -> what it adds, from its arguments (named and defaulted as the filter's own)
FILTER_GROWTH: dict[str, Callable[..., int]] = {
    "center": lambda value, width=80: _count(width),
    "indent": lambda s, width=4, first=False, blank=False: _lines(s) * _width(width),
    "wordwrap": lambda s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True:
        (budget().size(s) + 1) * budget().size(wrapstring or "\n"),
    "replace": lambda s, old, new, count=None: _replace_growth(s, old, new),
    "join": lambda value, d="", attribute=None: len(value) * budget().size(d),
    "batch": lambda value, linecount, fill_with=None: _count(linecount) if fill_with is not None else 0,
    "slice": lambda value, slices, fill_with=None: _count(slices),
    "format": lambda value, *args, **kwargs: printf_growth(value, kwargs or args),
    # Hugging Face's tojson, as engine.chat installs it
    "tojson": lambda value, ensure_ascii=False, indent=None, *options, **named: budget().size(value) * _width(indent),
    "sum": lambda iterable, attribute=None, start=0: _sum_growth(iterable, start),
}

# method of str -> what it adds, from the text and the call's arguments
METHOD_GROWTH: dict[str, Callable[..., int]] = {
    "center": lambda text, width, fillchar=" ": _count(width),
    "ljust": lambda text, width, fillchar=" ": _count(width),
    "rjust": lambda text, width, fillchar=" ": _count(width),
    "zfill": lambda text, width: _count(width),
    "expandtabs": lambda text, tabsize=8: text.count("\t") * _count(tabsize),
    "replace": lambda text, old, new, count=-1: _replace_growth(text, old, new),
    "join": lambda text, iterable: len(iterable) * len(text),
}


def listed(values: Iterable) -> list:
    """Iterators made lists, so a growth bound can measure them."""
    return [list(value) if isinstance(value, Iterator) else value for value in values]


def bounded(function: Callable, growth: Callable[..., int] | None) -> Callable:
    """A filter or test that is a step, and checks its arguments plus what it adds (``growth``
    of its arguments) before it runs, and its result after."""
    passes_context = int(hasattr(function, "jinja_pass_arg"))  # then Jinja passes an environment or context first

    @wraps(function)
    def bounded_function(*args, **kwargs):
        spent = budget()
        spent.tick()
        extra = 0
        if growth is not None:
            args, kwargs = listed(args), dict(zip(kwargs, listed(kwargs.values())))
            extra = growth(*args[passes_context:], **kwargs)
        spent.check(*args, *kwargs.values(), extra=extra)
        result = function(*args, **kwargs)
        spent.check(result)
        return result

    return bounded_function


class BoundedFormatter(SandboxedFormatter):
    """Jinja's sandboxed str.format, checking the text built so far, the next field's width
    included, before each field is formatted."""

    def __init__(self, env: jinja2.Environment, **kwargs):
        super().__init__(env, **kwargs)
        self.built = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        self.built += max(budget().size(value), format_widths(format_spec))
        budget().check(extra=self.built)
        return super().format_field(value, format_spec)


class BoundedEscapeFormatter(BoundedFormatter, EscapeFormatter):
    pass


def through(method: str, *args: nodes.Expr) -> nodes.Call:
    """An expression node calling the environment's ``method`` on ``args`` (through its ``call``)."""
    return nodes.Call(nodes.EnvironmentAttribute(method), list(args), [], None, None)


class BudgetedNodes(NodeTransformer):
    """Sends what the sandbox's hooks do not see through the budget: each loop iteration, each
    ``~``, the operands of each comparison, and the keys of dict literals (comparing or hashing
    a big value is work)."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = through("iterate", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        node = self.generic_visit(node)
        return through("concat_values", *node.nodes)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Compare:
        node = self.generic_visit(node)
        node.expr = through("checked", node.expr)
        for operand in node.ops:
            operand.expr = through("checked", operand.expr)
        return node

    def visit_Dict(self, node: nodes.Dict) -> nodes.Dict:
        node = self.generic_visit(node)
        for pair in node.items:
            pair.key = through("checked", pair.key)
        return node


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every render held to a Budget (see the module's docstring).

    filters and globals: added to Jinja's own (filters are bounded as the built-in ones are).
    """
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, *, filters: dict | None = None, globals: dict | None = None, **options):
        super().__init__(finalize=print_value, **options)
        del self.globals["lipsum"]
        self.globals.update(globals or {})
        filters = {**self.filters, **(filters or {})}
        self.filters = {name: bounded(f, FILTER_GROWTH.get(name))
                        for name, f in filters.items() if name not in LEFT_OUT_FILTERS}
        self.tests = {name: bounded(f, None) for name, f in self.tests.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = BudgetedNodes().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    # -- the sandbox's hooks ----------------------------------------------------------------

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr not in LEFT_OUT_METHODS and super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        spent = budget()
        spent.tick()
        spent.check(argument)
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's spelling: kwargs may say "self")
        spent = budget()
        spent.tick()
        text = getattr(__obj, "__self__", None)
        growth = METHOD_GROWTH.get(__obj.__name__) if isinstance(text, str) else None
        if growth is not None:
            args = listed(args)
        spent.check(*args, *(v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")),
                    extra=growth(text, *args, **kwargs) if growth else 0)
        result = super().call(__context, __obj, *args, **kwargs)
        spent.check(result)
        return result

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        spent = budget()
        spent.tick()
        growth = 0
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    growth = spent.size(seq) * max(n, 0)
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"the template multiplies integers into more than {MAX_INT_BITS} bits")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                and (left.bit_length() - 1) * right > MAX_INT_BITS:  # at least as many bits as that
            raise SecurityError(f"the template raises {left} to the power {right}")
        if operator == "%":
            growth = printf_growth(left, right)
        bound = spent.check(left, right, extra=growth)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, (list, tuple)):  # a list built up in a loop is then not measured afresh each time
            spent.remember(result, bound)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and str.format_map, through a BoundedFormatter (Jinja's own, bounded)."""
        if getattr(value, "__name__", None) not in ("format", "format_map") \
                or not isinstance(getattr(value, "__self__", None), str):
            return None
        text = value.__self__

        def format(*args, **kwargs) -> str:
            if value.__name__ == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            formatter = BoundedEscapeFormatter(self, escape=text.escape) if isinstance(text, Markup) \
                else BoundedFormatter(self)
            return type(text)(formatter.vformat(text, args, kwargs))

        return update_wrapper(format, value)

    # -- what BudgetedNodes calls (through ``call``, which ticks and checks the arguments) ------

    def iterate(self, iterable: Iterable) -> Iterator:
        spent = budget()
        for item in iterable:
            spent.tick()
            yield item

    def concat_values(self, *values: Any) -> str:
        """``a ~ b ~ ...``: the values as text, joined."""
        return join_bounded(map(str, values))

    def checked(self, value: Any) -> Any:
        return value

    concat = staticmethod(join_bounded)  # Jinja's "".join of a render's text, and of set-blocks and macros
