"""Python classes as schemas: a pydantic model (through pydantic, when the user has it), a dataclass or a TypedDict
(read from their type hints, no pydantic needed), and a reply's dict turned back into a dataclass instance."""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import sys
import types
import typing
from typing import Any

from ct2_magics.errors import LlamaError

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_HINT = ("use str, int, float, bool, None, Literal[...], an Enum, list[...], Optional[...] or a nested dataclass or "
         "TypedDict")


def from_class(obj: Any) -> tuple[dict[str, Any], str] | None:
    """(JSON Schema, kind) for a pydantic model, dataclass or TypedDict class; None for anything else."""
    pydantic = sys.modules.get("pydantic")  # a pydantic model means pydantic is imported: never import it here
    if pydantic is not None and isinstance(obj, pydantic.BaseModel):
        raise LlamaError(f"schema= takes the model class, not an instance: pass {type(obj).__name__}.")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        raise LlamaError(f"schema= takes the dataclass itself, not an instance: pass {type(obj).__name__}.")
    if not isinstance(obj, type):
        return None
    if pydantic is not None and issubclass(obj, pydantic.BaseModel):
        try:
            return obj.model_json_schema(), "pydantic"
        except Exception as e:  # pydantic's own refusal (e.g. a field type it cannot describe)
            raise LlamaError(f"pydantic cannot describe {obj.__name__} as JSON Schema ({_line(e)}).") from None
    if dataclasses.is_dataclass(obj) or _is_typeddict(obj):
        defs: dict[str, Any] = {}
        root = _class(obj, obj.__name__, defs, ())
        return ({**root, "$defs": defs} if defs else root), ("dataclass" if dataclasses.is_dataclass(obj) else "dict")
    return None


def _is_typeddict(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, dict) and hasattr(obj, "__required_keys__")


def _hints(cls: type, where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as e:  # a forward reference that names nothing, a bad annotation
        raise LlamaError(f"Cannot read the type hints of {where} ({_line(e)}).") from None


def _class(cls: type, where: str, defs: dict[str, Any], seen: tuple[type, ...]) -> dict[str, Any]:
    if cls in seen:
        raise LlamaError(f"{where} contains {cls.__name__} inside itself (a recursive type), which ct2-magics does not support.")
    seen = (*seen, cls)
    hints = _hints(cls, cls.__name__)
    if dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if f.init]
        names = [f.name for f in fields]
        required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    else:
        names = list(hints)
        required = [n for n in names if n in cls.__required_keys__]
    properties = {n: _hint(hints[n], f"field {n!r} of {cls.__name__}", defs, seen) for n in names}
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False, "title": cls.__name__}
    if required:
        out["required"] = required
    return out


def _hint(tp: Any, where: str, defs: dict[str, Any], seen: tuple[type, ...]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _hint(args[0], where, defs, seen)
    if tp in _SIMPLE or tp is None:
        return {"type": _SIMPLE[type(None) if tp is None else tp]}
    if origin is typing.Literal:
        return {"enum": [a.value if isinstance(a, enum.Enum) else a for a in args]}
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        return {"anyOf": [_hint(a, where, defs, seen) for a in args]}
    if origin in _SEQUENCES and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)):
        return {"type": "array", "items": _hint(args[0], where, defs, seen) if args else {}}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_typeddict(tp)):
        return _class(tp, where, defs, seen)
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        nested = tp.model_json_schema()
        defs.update(nested.pop("$defs", {}))
        return nested
    name = getattr(tp, "__name__", None) or repr(tp)
    raise LlamaError(f"{where} has the type {name}, which has no JSON Schema here; {_HINT}.")


def build(tp: Any, value: Any) -> Any:
    """`value` (parsed JSON that fits the schema made from `tp`) as `tp`: dataclasses, enums and tuples rebuilt."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return build(args[0], value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp, include_extras=True)
        return tp(**{f.name: build(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.init and f.name in value})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        fitting = [a for a in args if _fits(a, value)]
        return build(fitting[0], value) if fitting else value
    if origin in _SEQUENCES and isinstance(value, list):
        items = [build(args[0], v) for v in value] if args else value
        return tuple(items) if origin is tuple else items
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return tp.model_validate(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _fits(tp: Any, value: Any) -> bool:
    """Whether `value` can be an instance of the union arm `tp` (the first arm that fits is built)."""
    origin = typing.get_origin(tp) or tp
    if value is None:
        return tp in (None, type(None))
    if isinstance(value, dict):
        return isinstance(origin, type) and (dataclasses.is_dataclass(origin) or issubclass(origin, dict) or
                                             hasattr(origin, "model_validate"))
    if isinstance(value, list):
        return origin in _SEQUENCES
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return value in {m.value for m in origin}
    if isinstance(value, bool):
        return origin is bool
    if isinstance(value, (int, float)):
        return origin in (int, float) and not (origin is int and isinstance(value, float))
    return origin is str


def _line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
