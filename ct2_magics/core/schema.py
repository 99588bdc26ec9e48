"""`schema=`: a JSON Schema (or a pydantic model, dataclass or TypedDict) read, checked keyword by keyword, and made
ready for constrained decoding; replies turned back into values (a dict, an instance, a table's typed columns)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

from ct2_magics.errors import LlamaError

TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
# The keywords each kind of node may carry; annotations are allowed anywhere and change nothing.
KEYWORDS = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
}
COMMON = {"type", "enum", "const", "anyOf", "$ref"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "readOnly", "writeOnly",
               "deprecated", "$defs", "definitions"}
SUPPORTED = ("type, properties, required, additionalProperties, items, minItems, maxItems, enum, const, minLength, "
             "maxLength, pattern, minimum, maximum, exclusiveMinimum, exclusiveMaximum, anyOf, $ref to $defs")
WHAT = "a JSON Schema dict, a pydantic model class, a dataclass or a TypedDict"
# How llguidance writes JSON: json.dumps's separators, no free whitespace (a model cannot spend its max_tokens on
# blank lines), and the escapes JSON needs (\" \\ \n \t ...), never \u escapes (no lone surrogates in a value).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False}


class Schema:
    """A checked schema: `json` is plain JSON Schema (refs inlined, objects closed unless they say otherwise)."""

    def __init__(self, json_schema: dict[str, Any], source: Any = None, kind: str = "dict") -> None:
        self.json, self.source, self.kind = json_schema, source, kind  # kind: dict | pydantic | dataclass
        self._grammar: str | None = None

    def grammar(self) -> str:
        """The llguidance grammar of this schema (compiled once; llguidance is imported only here and in decoding)."""
        if self._grammar is None:
            import llguidance

            grammar = llguidance.LLMatcher.grammar_from_json_schema(self.json, overrides=JSON_STYLE)
            problem = llguidance.LLMatcher.validate_grammar(grammar)
            if problem and not problem.startswith("WARNING"):
                raise LlamaError(f"The schema cannot be used: {_one_line(problem)}.")
            self._grammar = grammar
        return self._grammar

    @property
    def properties(self) -> dict[str, Any]:
        """The top-level properties (empty unless the schema is an object)."""
        return self.json.get("properties", {}) if self.json.get("type") == "object" else {}

    def value(self, text: str) -> Any:
        """The reply as a value: a dict (a list, a str ...), or an instance of the pydantic model or dataclass."""
        data = json.loads(text)
        if self.kind == "pydantic":
            return self.source.model_validate(data)
        if self.kind == "dataclass":
            from ct2_magics.core.schema_types import build

            return build(self.source, data)
        return data

    def __repr__(self) -> str:
        return f"<ct2_magics Schema {json.dumps(self.json)[:80]}>"


def as_schema(obj: Any) -> Schema:
    """`obj` read and checked as a schema; LlamaError in one line naming what is not supported."""
    if isinstance(obj, Schema):
        return obj
    if isinstance(obj, Mapping):
        return _compiled(Schema(checked(obj)))
    from ct2_magics.core.schema_types import from_class

    found = from_class(obj)
    if found is None:
        hint = " (json.loads it first)" if isinstance(obj, (str, bytes)) else ""
        raise LlamaError(f"schema= takes {WHAT}; got {_name(obj)}{hint}.")
    json_schema, kind = found
    return _compiled(Schema(checked(json_schema), obj, kind))


def _compiled(schema: Schema) -> Schema:
    schema.grammar()  # what llguidance refuses (a regex it cannot read, a schema no value fits) is refused now
    return schema


def checked(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema with local $refs inlined and every keyword checked; LlamaError for the first problem."""
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise LlamaError(f"The schema is not JSON Schema: it holds something JSON cannot ({_one_line(e)}); pass {WHAT}.") from None
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})} if isinstance(schema, Mapping) else {}
    return _node(schema, "the schema", defs, ())


def _node(node: Any, where: str, defs: Mapping[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(node, bool) or not isinstance(node, Mapping):
        raise LlamaError(f"The schema is not JSON Schema: {where} is {_name(node)}, where a schema (a dict like "
                         "{'type': 'string'}) belongs.")
    if "$ref" in node:
        return _ref(node, where, defs, seen)
    for key in node:
        if not isinstance(key, str):
            raise LlamaError(f"The schema is not JSON Schema: {where} has the key {key!r}, which is not text.")
    types = _types(node.get("type"), where)
    allowed = COMMON | ANNOTATIONS | set().union(*(KEYWORDS.get(t, set()) for t in (types or TYPES)))
    for key in node:
        if key not in allowed:
            known = any(key in KEYWORDS[t] for t in KEYWORDS)
            why = f"which a {' or '.join(types)} does not take" if known else "which ct2-magics does not support"
            raise LlamaError(f"The schema uses {key!r} at {where}, {why}; supported: {SUPPORTED}.")
    out = {k: v for k, v in node.items() if k in ANNOTATIONS and k not in ("$defs", "definitions", "$schema", "$id")}
    if types:
        out["type"] = types[0] if len(types) == 1 else list(types)
    for key in ("enum", "const"):
        if key in node:
            out[key] = _values(node[key], key, where)
    if "anyOf" in node:
        options = node["anyOf"]
        if not isinstance(options, list) or not options:
            raise LlamaError(f"The schema's anyOf at {where} must be a non-empty list of schemas.")
        out["anyOf"] = [_node(o, f"{where}.anyOf[{i}]", defs, seen) for i, o in enumerate(options)]
    _bounds(node, out, where)
    if "object" in types or "properties" in node:
        out.setdefault("type", "object")  # properties alone describe an object: that is what the reply will be
        _object(node, out, where, defs, seen)
    if "items" in node:
        out["items"] = _node(node["items"], f"{where}.items", defs, seen)
    if "pattern" in node:
        if not isinstance(node["pattern"], str):
            raise LlamaError(f"The schema's pattern at {where} must be text (a regular expression).")
        out["pattern"] = node["pattern"]
    return out


def _ref(node: Mapping[str, Any], where: str, defs: Mapping[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    ref = node["$ref"]
    extra = sorted(set(node) - {"$ref"} - ANNOTATIONS)
    name = ref.rpartition("/")[2] if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")) else None
    if name is None or name not in defs:
        raise LlamaError(f"The schema's $ref {ref!r} at {where} points nowhere; only #/$defs/NAME of the same schema is "
                         "supported.")
    if name in seen:
        raise LlamaError(f"The schema's $ref {ref!r} at {where} is recursive (a type that contains itself), which "
                         "ct2-magics does not support.")
    if extra:
        raise LlamaError(f"The schema uses {extra[0]!r} beside $ref at {where}, which ct2-magics does not support.")
    return _node(defs[name], where, defs, (*seen, name))


def _types(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    names = value if isinstance(value, list) else [value]
    bad = [t for t in names if not isinstance(t, str) or t not in TYPES]
    if bad or not names or len(set(names)) != len(names):
        raise LlamaError(f"The schema's type {value!r} at {where} is not a JSON Schema type; use one of "
                         f"{', '.join(TYPES)} or a list of them.")
    return tuple(names)


def _values(value: Any, key: str, where: str) -> Any:
    if key == "enum" and (not isinstance(value, list) or not value):
        raise LlamaError(f"The schema's enum at {where} must be a non-empty list of values.")
    return value


def _bounds(node: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
    """Counts (minLength ...) must be whole numbers >= 0 and bounds numbers; a low bound above its high one is refused."""
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in node:
            v = node[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise LlamaError(f"The schema's {key} at {where} must be a whole number >= 0; got {v!r}.")
            out[key] = v
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in node:
            v = node[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise LlamaError(f"The schema's {key} at {where} must be a number; got {v!r}.")
            out[key] = v
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minimum", "maximum")):
        if low in out and high in out and out[low] > out[high]:
            raise LlamaError(f"The schema's {low} ({out[low]}) is above its {high} ({out[high]}) at {where}: no value fits.")


def _object(node: Mapping[str, Any], out: dict[str, Any], where: str, defs: Mapping[str, Any], seen: tuple[str, ...]) -> None:
    props = node.get("properties", {})
    if not isinstance(props, Mapping):
        raise LlamaError(f"The schema's properties at {where} must be a dict of name: schema.")
    out["properties"] = {k: _node(v, f"{where}.properties[{k!r}]", defs, seen) for k, v in props.items()}
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required) or len(set(required)) != len(required):
        raise LlamaError(f"The schema's required at {where} must be a list of distinct property names.")
    extra = node.get("additionalProperties", False)  # closed unless the schema opens it: the reply has the named fields
    missing = [r for r in required if r not in out["properties"]]
    if missing and extra is False:
        raise LlamaError(f"The schema requires {missing[0]!r} at {where}, which is not among its properties; add it there.")
    if required:
        out["required"] = list(required)
    out["additionalProperties"] = extra if isinstance(extra, bool) else _node(extra, f"{where}.additionalProperties", defs, seen)


def _name(obj: Any) -> str:
    kind = "class" if isinstance(obj, type) else "a"
    name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    return f"the {kind} {name}" if kind == "class" else f"a {name}"


def _one_line(e: Any) -> str:
    text = " ".join(str(e).split())
    return text[:300]
