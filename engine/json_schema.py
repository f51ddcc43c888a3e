"""JSON Schema -> GBNF, producing the grammar shapes of llama.cpp's common/json-schema-to-grammar.cpp.

Supported, rule for rule as llama.cpp writes them: type (one or a list),
object properties with required and optional keys in declaration order,
additionalProperties (false, true or a schema, beside named properties too),
arrays with an item schema or a tuple of them, minItems/maxItems, strings with
minLength/maxLength or format date, time, date-time or uuid, integers with
minimum/maximum (exclusive or not), number, boolean, null, enum, const,
anyOf/oneOf, llama.cpp's reading of allOf, and local $ref (into $defs,
definitions or anywhere else in the document).

String patterns (regular expressions) are converted too, but spelled as JSON
spells the string's content ('"' in the pattern is '\\"' in the output), and
a pattern we cannot convert is an error instead of llama.cpp's silent "any
string". Any other keyword that constrains values raises GrammarError naming
it, rather than being silently loosened.

A schema is untrusted input: one nested past ``MAX_DEPTH``, with more than
``MAX_OPTIONAL_PROPERTIES`` optional properties in an object, with integer
bounds outside int64 (or infinite), or with bounds no value meets (minLength
above maxLength...) is a GrammarError too.
"""
from __future__ import annotations

import json
import math
import re

from .errors import GrammarError

SPACE_RULE = '| " " | "\\n"{1,2} [ \\t]{0,20}'

# name -> (rule, rules it uses)
PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"',
               ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "null": ('"null"', ()),
}
RESERVED_NAMES = {"root", *PRIMITIVES}

STRING_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\""', ("date",)),
    "time-string": ('"\\"" time "\\""', ("time",)),
    "date-time-string": ('"\\"" date-time "\\""', ("date-time",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             '[0-9a-fA-F]{12} "\\""', ()),
}
PRIMITIVES.update(STRING_FORMATS)

INTEGER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
INT64 = (-2 ** 63, 2 ** 63 - 1)  # the integer bounds llama.cpp can hold

MAX_DEPTH = 128                 # schemas nested in schemas, $refs followed included
MAX_OPTIONAL_PROPERTIES = 256   # an object's optional properties: llama.cpp chains them, one rule each

# keywords that restrict values in ways this converter does not implement -> the types they restrict
# (a keyword for another type than the schema's does not apply, as in JSON Schema itself)
_ANY, _NUMBERS = None, ("number", "integer")
UNSUPPORTED: dict[str, tuple[str, ...] | None] = {
    "not": _ANY, "if": _ANY, "then": _ANY, "else": _ANY,
    **{k: ("number",) for k in INTEGER_BOUNDS}, "multipleOf": _NUMBERS,
    **{k: ("object",) for k in ("patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
                                "dependencies", "minProperties", "maxProperties", "unevaluatedProperties")},
    **{k: ("array",) for k in ("uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems",
                               "additionalItems")},
}

INVALID_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def format_literal(text: str) -> str:
    """A GBNF string literal for text."""
    return '"' + "".join(LITERAL_ESCAPES.get(c, c) for c in text) + '"'


def _class_char(c: str) -> str:
    """A character as written inside [...]."""
    return {"\\": "\\\\", "]": "\\]", "[": "\\[", "-": "\\-", '"': '\\"',
            "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, c)


def _json_text(value) -> str:
    """The compact JSON spelling a const or enum value must appear as."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def build_repetition(item: str, min_items: int, max_items: int | None, separator: str = "") -> str:
    """GBNF for item repeated min..max times (max None: unbounded), optionally separated."""
    if max_items == 0:
        return ""
    if min_items == 0 and max_items == 1:
        return f"{item}?"
    if not separator:
        if min_items == 1 and max_items is None:
            return f"{item}+"
        if min_items == 0 and max_items is None:
            return f"{item}*"
        return f"{item}{{{min_items},{'' if max_items is None else max_items}}}"
    rest = build_repetition(f"({separator} {item})", max(min_items - 1, 0),
                            None if max_items is None else max_items - 1)
    result = f"{item} {rest}"
    return f"({result})?" if min_items == 0 else result


class _Converter:
    def __init__(self, root_schema):
        self.root_schema = root_schema
        self.rules: dict[str, str] = {"space": SPACE_RULE}
        self.refs_in_progress: set[str] = set()
        self.depth = 0

    # -- rules ----------------------------------------------------------------------------

    def add_rule(self, name: str, rule: str) -> str:
        """Define a rule, renaming it name0, name1, ... if the name holds a different rule."""
        key = INVALID_RULE_CHARS.sub("-", name)
        if key in self.rules and self.rules[key] != rule:
            i = 0
            while f"{key}{i}" in self.rules and self.rules[f"{key}{i}"] != rule:
                i += 1
            key = f"{key}{i}"
        self.rules[key] = rule
        return key

    def add_primitive(self, name: str, primitive: str) -> str:
        rule, deps = PRIMITIVES[primitive]
        key = self.add_rule(name, rule)
        for dep in deps:
            if dep not in self.rules:
                self.add_primitive(dep, dep)
        return key

    def grammar(self) -> str:
        return "".join(f"{name} ::= {rule}\n" for name, rule in sorted(self.rules.items()))

    # -- schemas --------------------------------------------------------------------------

    def visit(self, schema, name: str, path: str) -> str:
        """The rule for ``schema``, at most MAX_DEPTH schemas deep."""
        if self.depth == MAX_DEPTH:
            raise GrammarError(f"JSON schema at {path}: schemas nest more than {MAX_DEPTH} deep")
        self.depth += 1
        try:
            return self.visit_schema(schema, name, path)
        finally:
            self.depth -= 1

    def visit_schema(self, schema, name: str, path: str) -> str:
        if schema is True:
            schema = {}
        if not isinstance(schema, dict):
            raise GrammarError(f"JSON schema at {path}: a schema must be an object or true, got {schema!r}")
        rule_name = name + "-" if name in RESERVED_NAMES else (name or "root")
        sub_name = name + "-" if name else ""

        if "$ref" in schema:
            return self.add_rule(rule_name, self.resolve_ref(schema["$ref"], path))
        for key in ("oneOf", "anyOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise GrammarError(f"JSON schema at {path}/{key}: must be a non-empty array of schemas")
                names = [self.visit(alt, f"{name}{'-' if name else 'alternative-'}{i}", f"{path}/{key}/{i}")
                         for i, alt in enumerate(alts)]
                return self.add_rule(rule_name, " | ".join(names))
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise GrammarError(f"JSON schema at {path}/type: must not be empty")
            names = [self.visit({**schema, "type": t}, f"{name}{'-' if name else 'alternative-'}{i}",
                                f"{path}/type/{i}") for i, t in enumerate(kind)]
            return self.add_rule(rule_name, " | ".join(names))
        for key, types in UNSUPPORTED.items():
            if key in schema and (types is None or kind is None or kind in types):
                raise GrammarError(f"JSON schema at {path}: keyword '{key}' is not supported")
        if "const" in schema:
            return self.add_rule(rule_name, format_literal(_json_text(schema["const"])))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError(f"JSON schema at {path}/enum: must be a non-empty array")
            return self.add_rule(rule_name, "(" + " | ".join(format_literal(_json_text(v)) for v in values) + ")")
        if kind is not None and not isinstance(kind, str):
            raise GrammarError(f"JSON schema at {path}/type: must be a string or an array of strings")

        has_properties = "properties" in schema or schema.get("additionalProperties", True) is not True
        if "allOf" in schema and (kind == "string" or (kind in (None, "object") and not has_properties)):
            return self.visit_all_of(schema, name, rule_name, path)
        if kind is None:
            if has_properties:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            elif any(k in schema for k in ("pattern", "minLength", "maxLength", "format")):
                kind = "string"
            else:
                return self.add_rule(rule_name, self.add_primitive("value", "value"))

        if kind == "object":
            return self.visit_object(schema, name, rule_name, path)
        if kind == "array":
            return self.visit_array(schema, sub_name, rule_name, path)
        if kind == "string":
            return self.visit_string(schema, rule_name, path)
        if kind == "integer" and any(k in schema for k in INTEGER_BOUNDS):
            low, high = _integer_bounds(schema, path)
            return self.add_rule(rule_name, f"({integer_range(low, high)})")
        if kind in ("integer", "number", "boolean", "null"):
            return self.visit_primitive(rule_name, kind)
        raise GrammarError(f"JSON schema at {path}/type: unrecognised type {kind!r}")

    def visit_string(self, schema: dict, rule_name: str, path: str) -> str:
        """A pattern wins over a format, a format over length limits, as in llama.cpp."""
        if "pattern" in schema:
            return self.add_rule(rule_name, pattern_to_gbnf(schema["pattern"], self, f"{path}/pattern"))
        fmt = schema.get("format")
        if fmt is not None:
            fmt = "uuid" if isinstance(fmt, str) and re.fullmatch(r"uuid[1-5]?", fmt) else fmt
            if fmt not in ("date", "time", "date-time", "uuid"):
                raise GrammarError(f"JSON schema at {path}: format {fmt!r} is not supported")
            if fmt == "uuid":
                return self.visit_primitive(rule_name, "uuid")
            return self.add_rule(rule_name, self.add_primitive(f"{fmt}-string", f"{fmt}-string"))
        min_len, max_len = _count_range(schema, "minLength", "maxLength", path)
        if min_len > 0 or max_len is not None:
            char = self.add_primitive("char", "char")
            return self.add_rule(rule_name, '"\\"" ' + build_repetition(char, min_len, max_len) + ' "\\""')
        return self.visit_primitive(rule_name, "string")

    def visit_primitive(self, rule_name: str, kind: str) -> str:
        return self.add_primitive("root" if rule_name == "root" else kind, kind)

    def visit_array(self, schema: dict, sub_name: str, rule_name: str, path: str) -> str:
        key = "items" if "items" in schema else "prefixItems" if "prefixItems" in schema else None
        items = schema.get(key, {}) if key else {}
        if isinstance(items, list):
            names = [self.visit(item, f"{sub_name}tuple-{i}", f"{path}/{key}/{i}") for i, item in enumerate(items)]
            return self.add_rule(rule_name, '"[" space ' + ' "," space '.join(names) + ' space "]"')
        min_items, max_items = _count_range(schema, "minItems", "maxItems", path)
        if items in ({}, True) and min_items == 0 and max_items is None:
            return self.visit_primitive(rule_name, "array")
        item = self.visit(items, f"{sub_name}item", f"{path}/{key}")
        return self.add_rule(rule_name, '"[" space ' + build_repetition(item, min_items, max_items, '"," space')
                             + ' space "]"')

    def visit_object(self, schema: dict, name: str, rule_name: str, path: str) -> str:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise GrammarError(f"JSON schema at {path}/properties: must be an object")
        required = set(r for r in schema.get("required", []) if isinstance(r, str))
        additional = schema.get("additionalProperties", None if properties or "properties" in schema else True)
        if additional is not None and additional is not False and not isinstance(additional, (bool, dict)):
            raise GrammarError(f"JSON schema at {path}/additionalProperties: must be a boolean or a schema")
        if additional is False:
            additional = None
        if not properties and additional in (True, {}):
            return self.add_rule(rule_name, self.add_primitive("object", "object"))
        return self.add_rule(rule_name, self.object_rule(list(properties.items()), required, name, additional, path))

    def visit_all_of(self, schema: dict, name: str, rule_name: str, path: str) -> str:
        """llama.cpp's allOf: the union of the components' object properties (required unless
        they come from an anyOf), or the enum values every component allows."""
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise GrammarError(f"JSON schema at {path}/allOf: must be a non-empty array of schemas")
        properties: list[tuple[str, object]] = []
        required: set[str] = set()
        enum_counts: dict[str, int] = {}

        def add(part, is_required: bool) -> None:
            while isinstance(part, dict) and "$ref" in part:
                part = self.ref_target(part["$ref"], path)
            if not isinstance(part, dict) or any(k in part for k in ("anyOf", "oneOf", "const")):
                return
            if "enum" in part and isinstance(part["enum"], list):
                for value in part["enum"]:
                    literal = format_literal(_json_text(value))
                    enum_counts[literal] = enum_counts.get(literal, 0) + 1
            elif part.get("type", "object") == "object" and isinstance(part.get("properties"), dict):
                for prop, prop_schema in part["properties"].items():
                    properties.append((prop, prop_schema))
                    if is_required:
                        required.add(prop)

        for part in parts:
            alts = part.get("anyOf", part.get("oneOf")) if isinstance(part, dict) else None
            if isinstance(alts, list):
                for alt in alts:
                    add(alt, False)
            else:
                add(part, True)
        common = [literal for literal in sorted(enum_counts) if enum_counts[literal] == len(parts)]
        if common:
            return self.add_rule(rule_name, "(" + " | ".join(common) + ")")
        return self.add_rule(rule_name, self.object_rule(properties, required, name, None, path))

    def object_rule(self, properties: list[tuple[str, object]], required: set[str], name: str,
                    additional, path: str) -> str:
        """Required properties in order, then the optional ones in order, each present or not."""
        prefix = name + "-" if name else ""
        kv_names: dict[str, str] = {}
        required_props, optional_props = [], []
        for prop, prop_schema in properties:
            value_rule = self.visit(prop_schema, prefix + prop, f"{path}/properties/{prop}")
            kv_names[prop] = self.add_rule(f"{prefix}{prop}-kv",
                                           f'{format_literal(_json_text(prop))} space ":" space {value_rule}')
            (required_props if prop in required else optional_props).append(prop)
        if additional is not None:
            value_rule = (self.add_primitive("value", "value") if additional in (True, {})
                          else self.visit(additional, f"{prefix}additional-value", f"{path}/additionalProperties"))
            key_rule = (self.add_rule(f"{prefix}additional-k", self.not_strings([p for p, _ in properties]))
                        if properties else self.add_primitive("string", "string"))
            kv_names["*"] = self.add_rule(f"{prefix}additional-kv", f'{key_rule} ":" space {value_rule}')
            optional_props.append("*")
        if not required_props and not optional_props:
            return '"{" space "}"'
        if len(optional_props) > MAX_OPTIONAL_PROPERTIES:
            raise GrammarError(f"JSON schema at {path}: more than {MAX_OPTIONAL_PROPERTIES} optional properties")

        rule = '"{" space ' + ' "," space '.join(kv_names[p] for p in required_props)
        if optional_props:
            rule += " ("
            if required_props:
                rule += ' "," space ( '
            rule += " | ".join(self.optional_chain(optional_props[i:], kv_names, name, first_optional=False)
                               for i in range(len(optional_props)))
            if required_props:
                rule += " )"
            rule += " )?"
        rule += ' space "}"'
        return rule

    def optional_chain(self, keys: list[str], kv_names: dict[str, str], name: str, first_optional: bool) -> str:
        """The optional properties keys[0], keys[1], ... in order, each present or not."""
        key = keys[0]
        kv = kv_names[key]
        comma_kv = f'( "," space {kv} )'
        if first_optional:
            result = comma_kv + ("*" if key == "*" else "?")
        else:
            result = kv + (f" {comma_kv}*" if key == "*" else "")
        if len(keys) > 1:
            rest_name = f"{name}{'-' if name else ''}{key}-rest"
            result += " " + self.add_rule(rest_name, self.optional_chain(keys[1:], kv_names, name, first_optional=True))
        return result

    def not_strings(self, strings: list[str]) -> str:
        """A JSON string that is none of `strings` (nor, as in llama.cpp, a proper prefix of one)."""
        trie: dict = {}
        for text in strings:
            node = trie
            for c in text:
                node = node.setdefault(c, {})
            node[None] = {}  # end of a string
        char = self.add_primitive("char", "char")

        def alternatives(node: dict) -> str:
            chars = sorted(c for c in node if c is not None)
            alts = []
            for c in chars:
                child = node[c]
                if any(k is not None for k in child):
                    alts.append(f"[{_class_char(c)}] ({alternatives(child)})")
                else:
                    alts.append(f"[{_class_char(c)}] {char}+")
            if chars:
                alts.append(f'[^"{"".join(_class_char(c) for c in chars)}] {char}*')
            return " | ".join(alts)

        optional = "" if None in trie else "?"
        return f'["] ( {alternatives(trie)} ){optional} ["]'

    def resolve_ref(self, ref, path: str) -> str:
        """The rule for a $ref's target, visited once (a reference back into it names the rule)."""
        if not isinstance(ref, str):
            raise GrammarError(f"JSON schema at {path}/$ref: must be a string")
        ref_name = "ref" + INVALID_RULE_CHARS.sub("-", ref[1:])
        if ref_name not in self.rules and ref not in self.refs_in_progress:
            target = self.ref_target(ref, path)
            self.refs_in_progress.add(ref)
            ref_name = self.visit(target, ref_name, ref)
            self.refs_in_progress.discard(ref)
        return ref_name

    def ref_target(self, ref, path: str):
        """The schema a local $ref ('#/a/b') points at."""
        if not isinstance(ref, str):
            raise GrammarError(f"JSON schema at {path}/$ref: must be a string")
        if not ref.startswith("#/"):
            raise GrammarError(f"JSON schema at {path}: $ref {ref!r} is not supported, "
                               "only references into the same document ('#/...')")
        target = self.root_schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise GrammarError(f"JSON schema at {path}: cannot resolve $ref {ref!r}")
        return target


def _count(schema: dict, key: str, path: str, default):
    value = schema.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()) \
            or value < 0:
        raise GrammarError(f"JSON schema at {path}/{key}: must be a non-negative integer")
    return int(value)


def _count_range(schema: dict, min_key: str, max_key: str, path: str) -> tuple[int, int | None]:
    """(min, max or None) of a length or item count; a min above the max matches nothing, an error."""
    low, high = _count(schema, min_key, path, 0), _count(schema, max_key, path, None)
    if high is not None and low > high:
        raise GrammarError(f"JSON schema at {path}: {min_key} {low} is above {max_key} {high}, so nothing matches")
    return low, high


def _integer_bounds(schema: dict, path: str) -> tuple[int | None, int | None]:
    """The inclusive integer range of minimum/exclusiveMinimum and maximum/exclusiveMaximum."""
    def bound(key: str) -> float:
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not INT64[0] <= value <= INT64[1]:
            raise GrammarError(f"JSON schema at {path}/{key}: must be a number in [-2**63, 2**63)")
        return value
    low = high = None
    if "minimum" in schema:
        low = math.ceil(bound("minimum"))
    elif "exclusiveMinimum" in schema:
        low = math.floor(bound("exclusiveMinimum")) + 1
    if "maximum" in schema:
        high = math.floor(bound("maximum"))
    elif "exclusiveMaximum" in schema:
        high = math.ceil(bound("exclusiveMaximum")) - 1
    if low is not None and high is not None and low > high:
        raise GrammarError(f"JSON schema at {path}: no integer lies between the lower bound {low} "
                           f"and the upper bound {high}")
    return low, high


def _digits(min_count: int, max_count: int) -> str:
    """[0-9] repeated min_count..max_count times."""
    if min_count == max_count == 1:
        return "[0-9]"
    if min_count == max_count:
        return f"[0-9]{{{min_count}}}"
    return f"[0-9]{{{min_count},{max_count}}}"


def _digit_range(low: str, high: str) -> str:
    return f"[{low}]" if low == high else f"[{low}-{high}]"


def _same_length_range(low: str, high: str) -> str:
    """The decimal numbers from low to high, both spelled with the same number of digits."""
    i = 0
    while i < len(low) and low[i] == high[i]:
        i += 1
    out = f'"{low[:i]}"' if i else ""
    if i == len(low):
        return out
    if i:
        out += " "
    rest = len(low) - i - 1
    if rest == 0:
        return out + f"[{low[i]}-{high[i]}]"
    zeros, nines = "0" * rest, "9" * rest
    below, above = chr(ord(high[i]) - 1), chr(ord(low[i]) + 1)
    parts, high_done = [], False
    if low[i + 1:] == zeros:
        parts.append(f"{_digit_range(low[i], below)} {_digits(rest, rest)}")
    else:
        parts.append(f"[{low[i]}] ({_same_length_range(low[i + 1:], nines)})")
        if low[i] < below:
            if high[i + 1:] == nines:
                parts.append(f"{_digit_range(above, high[i])} {_digits(rest, rest)}")
                high_done = True
            else:
                parts.append(f"{_digit_range(above, below)} {_digits(rest, rest)}")
    if not high_done:
        parts.append(f"{_digit_range(high[i], high[i])} {_same_length_range(zeros, high[i + 1:])}")
    return out + "(" + " | ".join(parts) + ")"


def integer_range(low: int | None, high: int | None, digits_left: int = 16, top_level: bool = True) -> str:
    """GBNF for the JSON integers in [low, high] (None: unbounded), as llama.cpp spells them:
    numbers of each length in turn, split digit by digit where a bound falls inside them."""
    fewer = max(digits_left - 1, 1)
    if low is not None and high is not None:
        if low < 0 and high < 0:
            return f'"-" ({integer_range(-high, -low, digits_left, True)})'
        out = ""
        if low < 0:
            out = f'"-" ({integer_range(0, -low, digits_left, True)}) | '
            low = 0
        low_s, high_s = str(low), str(high)
        parts = []
        for n in range(len(low_s), len(high_s)):
            parts.append(_same_length_range(low_s, "9" * n))
            low_s = "1" + "0" * n
        parts.append(_same_length_range(low_s, high_s))
        return out + " | ".join(parts)
    if low is not None:
        if low < 0:
            return (f'"-" ({integer_range(None, -low, digits_left, False)}) | [0] | [1-9] '
                    + _digits(0, digits_left - 1))
        if low == 0:
            return f"[0] | [1-9] {_digits(0, fewer)}" if top_level else _digits(1, digits_left)
        if low <= 9:
            c, start = str(low), "1" if top_level else "0"
            out = f"{_digit_range(start, chr(ord(c) - 1))} {_digits(1, fewer)} | " if c > start else ""
            return out + f"{_digit_range(c, '9')} {_digits(0, fewer)}"
        low_s = str(low)
        c, n = low_s[0], len(low_s)
        out = f"{_digit_range('1' if top_level else '0', chr(ord(c) - 1))} {_digits(n, fewer)} | " if c > "1" else ""
        out += f"{_digit_range(c, c)} ({integer_range(int(low_s[1:]), None, fewer, False)})"
        if c < "9":
            out += f" | {_digit_range(chr(ord(c) + 1), '9')} {_digits(n - 1, fewer)}"
        return out
    if high is None:
        raise GrammarError("an integer range needs a lower or an upper bound")
    if high >= 0:
        out = f'"-" [1-9] {_digits(0, fewer)} | ' if top_level else ""
        return out + integer_range(0, high, digits_left, True)
    return f'"-" ({integer_range(-high, None, digits_left, False)})'


def json_schema_to_gbnf(schema: dict | bool | str) -> str:
    """GBNF text accepting the JSON documents that match the schema (a dict, or its JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError) as e:  # ValueError: bad JSON, or an integer of over 4300 digits
            raise GrammarError(f"JSON schema is not valid JSON: {type(e).__name__}: {e}") from None
    converter = _Converter(schema)
    try:
        converter.visit(schema, "", "#")
    except RecursionError:  # a pattern's groups, or a property name spelled out character by character
        raise GrammarError("JSON schema nests too deeply to convert") from None
    return converter.grammar()


# code points a JSON string holds unescaped: not '"', not '\', not a control character
JSON_UNESCAPED = [(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x10FFFF)]
CLASS_ESCAPES = {"d": [(0x30, 0x39)], "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
                 "s": [(0x09, 0x0D), (0x20, 0x20)]}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}


def _gbnf_class_char(code: int) -> str:
    c = chr(code)
    if 0x20 < code < 0x7F and c not in "[]-^\\\"":
        return c
    return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(max(x0, y0), min(x1, y1)) for x0, x1 in a for y0, y1 in b if max(x0, y0) <= min(x1, y1)]


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for lo, hi in sorted(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= 0x10FFFF:
        out.append((start, 0x10FFFF))
    return out


def _json_spelling(code: int) -> str:
    """How a code point of string content is written inside a JSON string."""
    return json.dumps(chr(code), ensure_ascii=False)[1:-1]


def _json_chars(ranges: list[tuple[int, int]]) -> str:
    """GBNF for one character of string content from a set of code points, as it appears inside
    a JSON string: plain where JSON allows that, otherwise as its JSON escape."""
    singles = [lo for lo, hi in ranges if lo == hi]
    if len(ranges) == 1 and singles:
        return format_literal(_json_spelling(singles[0]))
    alts = []
    plain = _intersect(ranges, JSON_UNESCAPED)
    if plain:
        alts.append("[" + "".join(_gbnf_class_char(lo) + ("" if lo == hi else "-" + _gbnf_class_char(hi))
                                  for lo, hi in plain) + "]")
    short_escapes = (0x22, 0x5C, 0x08, 0x0C, 0x0A, 0x0D, 0x09)
    alts += [format_literal(_json_spelling(code)) for code in short_escapes if _intersect(ranges, [(code, code)])]
    controls = {code for lo, hi in _intersect(ranges, [(0x00, 0x1F)]) for code in range(lo, hi + 1)}
    for high in (0, 1):
        digits = "".join(f"{c & 0xF:X}" for c in sorted(controls) if c >> 4 == high
                         and _json_spelling(c).startswith("\\u"))
        if digits:
            alts.append(format_literal(f"\\u00{high}") + f" [{digits}]")
    if not alts:
        raise GrammarError("a character class of the pattern matches no character")
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _is_literal(item: str) -> bool:
    """Whether a GBNF item is one plain string literal (no quantifier after it)."""
    return len(item) >= 2 and item[0] == '"' and item[-1] == '"' \
        and re.fullmatch(r'"(?:[^"\\]|\\.)*"', item) is not None


class _PatternParser:
    """A regular expression (the ECMAScript subset JSON Schema patterns use in practice) as GBNF
    over the JSON spelling of the string: literals, '.', classes, \\d \\w \\s and their negations,
    groups, alternation and the quantifiers * + ? {m} {m,} {m,n}."""

    def __init__(self, pattern: str, path: str, converter: _Converter):
        self.src, self.pos, self.path = pattern, 0, path
        self.converter = converter

    def error(self, what: str) -> GrammarError:
        return GrammarError(f"JSON schema at {self.path}: pattern {self.src!r}: {what} at offset {self.pos}")

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def alternation(self) -> str:
        alts = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            alts.append(self.sequence())
        return " | ".join(a or '""' for a in alts)

    def sequence(self) -> str:
        items: list[str] = []
        while self.peek() not in ("", "|", ")"):
            if self.peek() in "^$":
                raise self.error("anchors inside the pattern are not supported")
            item = self.quantified(self.atom())
            if items and _is_literal(item) and _is_literal(items[-1]):
                item = items.pop()[:-1] + item[1:]  # "ab" "c" -> "abc"
            items.append(item)
        return " ".join(items)

    def quantified(self, atom: str) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            op = c
        elif c == "{" and re.match(r"\{\d*(,\d*)?\}", self.src[self.pos:]):
            m = re.match(r"\{(\d*)(,?)(\d*)\}", self.src[self.pos:])
            self.pos += m.end()
            low = int(m.group(1) or 0)
            high = None if m.group(2) and not m.group(3) else int(m.group(3) or m.group(1) or 0)
            if high is not None and high < low:
                raise self.error("a repetition's maximum is below its minimum")
            op = f"{{{low}}}" if high == low else f"{{{low},{'' if high is None else high}}}"
        else:
            return atom
        if self.peek() in ("?", "+"):
            raise self.error("lazy and possessive quantifiers are not supported")
        return atom + op

    def atom(self) -> str:
        c = self.peek()
        self.pos += 1
        if c == "(":
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise self.error("lookarounds and named groups are not supported")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.error("unbalanced parentheses")
            self.pos += 1
            return f"({inner})"
        if c == "[":
            return _json_chars(self.char_class())
        if c == ".":  # any character but a line break, named "dot" as llama.cpp does
            return self.converter.add_rule("dot", _json_chars(_complement([(0x0A, 0x0A), (0x0D, 0x0D)])))
        if c in "*+?{}])":
            raise self.error(f"unexpected {c!r}")
        if c == "\\":
            return _json_chars(self.escape())
        return _json_chars([(ord(c), ord(c))])

    def escape(self) -> list[tuple[int, int]]:
        """The code points of the escape after a backslash."""
        c = self.peek()
        self.pos += 1
        if c == "":
            raise self.error("trailing backslash")
        if c.lower() in CLASS_ESCAPES:
            ranges = CLASS_ESCAPES[c.lower()]
            return _complement(ranges) if c.isupper() else ranges
        if c in CHAR_ESCAPES:
            return [(ord(CHAR_ESCAPES[c]),) * 2]
        if c in "xu":
            n = 2 if c == "x" else 4
            digits = self.src[self.pos:self.pos + n]
            if len(digits) != n or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"expected {n} hex digits after \\{c}")
            self.pos += n
            code = int(digits, 16)
            if 0xD800 <= code <= 0xDFFF:
                raise self.error(f"\\{c}{digits} is a UTF-16 surrogate, not a character")
            return [(code, code)]
        if c.isalnum():
            raise self.error(f"escape \\{c} is not supported")
        return [(ord(c), ord(c))]

    def char_class(self) -> list[tuple[int, int]]:
        negate = self.peek() == "^"
        self.pos += negate
        ranges: list[tuple[int, int]] = []
        first = True
        while self.peek() != "]" or first:
            first = False
            if self.peek() == "":
                raise self.error("unterminated character class")
            lo = self.class_item()
            if self.peek() == "-" and self.src[self.pos + 1:self.pos + 2] not in ("]", ""):
                self.pos += 1
                hi = self.class_item()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.error("a range needs single characters at both ends")
                if hi[0][0] < lo[0][0]:
                    raise self.error("a range is out of order")
                lo = [(lo[0][0], hi[0][0])]
            ranges += lo
        self.pos += 1
        return _complement(ranges) if negate else ranges

    def class_item(self) -> list[tuple[int, int]]:
        c = self.peek()
        self.pos += 1
        if c == "\\":
            if self.peek() == "b":
                self.pos += 1
                return [(0x08, 0x08)]
            return self.escape()
        return [(ord(c), ord(c))]


def pattern_to_gbnf(pattern, converter: _Converter, path: str) -> str:
    """The rule body for a JSON string matching a regular expression; without ^ or $ the match
    may start or end anywhere, as JSON Schema's unanchored patterns do."""
    if not isinstance(pattern, str):
        raise GrammarError(f"JSON schema at {path}: must be a string")
    body = pattern[1:] if pattern.startswith("^") else pattern
    anchored_end = body.endswith("$") and not body.endswith("\\$")
    body = body[:-1] if anchored_end else body
    parser = _PatternParser(body, path, converter)
    expr = parser.alternation()
    if parser.pos != len(body):
        raise parser.error("unbalanced parentheses")
    any_chars = f"{converter.add_primitive('char', 'char')}* " if not pattern.startswith("^") else ""
    tail = "" if anchored_end else f" {converter.add_primitive('char', 'char')}*"
    return f'"\\"" {any_chars}({expr or chr(34) * 2}){tail} "\\""'
