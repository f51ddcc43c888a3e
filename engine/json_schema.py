"""JSON Schema -> GBNF, producing the grammar shapes of llama.cpp's common/json-schema-to-grammar.cpp.

Supported: type (one or a list), object properties with required and
optional keys (in declaration order), additionalProperties (false, true, or a
schema when there are no named properties), arrays with an item schema or a
tuple of them, minItems/maxItems, strings with minLength/maxLength, number,
integer, boolean, null, enum, const, anyOf/oneOf, and local $ref (into $defs,
definitions or anywhere else in the document). Anything else that constrains
values raises GrammarError naming the keyword, rather than being silently
loosened.
"""
from __future__ import annotations

import json
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
RESERVED_NAMES = {"root", *PRIMITIVES, "date", "time", "date-time", "date-string", "time-string",
                  "date-time-string", "uuid"}

# keywords that restrict values in ways this converter does not implement
UNSUPPORTED = ("pattern", "format", "allOf", "not", "if", "then", "else", "patternProperties",
               "propertyNames", "dependentRequired", "dependentSchemas", "dependencies",
               "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
               "minProperties", "maxProperties", "uniqueItems", "contains", "minContains",
               "maxContains", "unevaluatedProperties", "unevaluatedItems", "additionalItems")

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
        for key in UNSUPPORTED:
            if key in schema:
                raise GrammarError(f"JSON schema at {path}: keyword '{key}' is not supported")

        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise GrammarError(f"JSON schema at {path}/type: must not be empty")
            names = [self.visit({**schema, "type": t}, f"{name}{'-' if name else 'alternative-'}{i}",
                                f"{path}/type/{i}") for i, t in enumerate(kind)]
            return self.add_rule(rule_name, " | ".join(names))
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
        if kind is None:
            if has_properties:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            elif "minLength" in schema or "maxLength" in schema:
                kind = "string"
            else:
                return self.add_rule(rule_name, self.add_primitive("value", "value"))

        if kind == "object":
            return self.visit_object(schema, name, rule_name, path)
        if kind == "array":
            return self.visit_array(schema, sub_name, rule_name, path)
        if kind == "string":
            min_len = _count(schema, "minLength", path, 0)
            max_len = _count(schema, "maxLength", path, None)
            if min_len > 0 or max_len is not None:
                char = self.add_primitive("char", "char")
                return self.add_rule(rule_name, '"\\"" ' + build_repetition(char, min_len, max_len) + ' "\\""')
            return self.visit_primitive(rule_name, "string")
        if kind in ("integer", "number", "boolean", "null"):
            return self.visit_primitive(rule_name, kind)
        raise GrammarError(f"JSON schema at {path}/type: unrecognised type {kind!r}")

    def visit_primitive(self, rule_name: str, kind: str) -> str:
        return self.add_primitive("root" if rule_name == "root" else kind, kind)

    def visit_array(self, schema: dict, sub_name: str, rule_name: str, path: str) -> str:
        key = "items" if "items" in schema else "prefixItems" if "prefixItems" in schema else None
        items = schema.get(key, {}) if key else {}
        if isinstance(items, list):
            names = [self.visit(item, f"{sub_name}tuple-{i}", f"{path}/{key}/{i}") for i, item in enumerate(items)]
            return self.add_rule(rule_name, '"[" space ' + ' "," space '.join(names) + ' space "]"')
        min_items = _count(schema, "minItems", path, 0)
        max_items = _count(schema, "maxItems", path, None)
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

        prefix = name + "-" if name else ""
        kv_names: dict[str, str] = {}
        required_props, optional_props = [], []
        for prop, prop_schema in properties.items():
            value_rule = self.visit(prop_schema, prefix + prop, f"{path}/properties/{prop}")
            kv_names[prop] = self.add_rule(f"{prefix}{prop}-kv",
                                           f'{format_literal(_json_text(prop))} space ":" space {value_rule}')
            (required_props if prop in required else optional_props).append(prop)
        if additional is not None:
            value_rule = (self.add_primitive("value", "value") if additional in (True, {})
                          else self.visit(additional, f"{prefix}additional-value", f"{path}/additionalProperties"))
            key_rule = (self.add_rule(f"{prefix}additional-k", self.not_strings(list(properties))) if properties
                        else self.add_primitive("string", "string"))
            kv_names["*"] = self.add_rule(f"{prefix}additional-kv", f'{key_rule} ":" space {value_rule}')
            optional_props.append("*")
        if not required_props and not optional_props:
            return self.add_rule(rule_name, '"{" space "}"')

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
        return self.add_rule(rule_name, rule)

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
        if not isinstance(ref, str):
            raise GrammarError(f"JSON schema at {path}/$ref: must be a string")
        if not ref.startswith("#/"):
            raise GrammarError(f"JSON schema at {path}: $ref {ref!r} is not supported, "
                               "only references into the same document ('#/...')")
        ref_name = "ref" + INVALID_RULE_CHARS.sub("-", ref[1:])
        if ref_name not in self.rules and ref not in self.refs_in_progress:
            target = self.root_schema
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    raise GrammarError(f"JSON schema at {path}: cannot resolve $ref {ref!r}")
            self.refs_in_progress.add(ref)
            ref_name = self.visit(target, ref_name, ref)
            self.refs_in_progress.discard(ref)
        return ref_name


def _count(schema: dict, key: str, path: str, default):
    value = schema.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise GrammarError(f"JSON schema at {path}/{key}: must be a non-negative integer")
    return int(value)


def json_schema_to_gbnf(schema: dict | bool | str) -> str:
    """GBNF text accepting the JSON documents that match the schema (a dict, or its JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"JSON schema is not valid JSON: {e}") from None
    converter = _Converter(schema)
    converter.visit(schema, "", "#")
    return converter.grammar()
