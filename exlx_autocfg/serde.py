"""Plain-data round trips for the dataclasses that make up facts, plans and profiles.

Only what JSON and TOML can carry: dataclasses, lists, tuples, dicts with str keys, str/int/float/bool/None.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_data(obj: Any) -> Any:
    """A dataclass tree as JSON-ready data (tuples become lists). A field whose metadata has
    `omit_default` is left out while it holds its default (optional parts of a record)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_default") and _is_default(f, getattr(obj, f.name)))}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_data(v) for k, v in obj.items()}
    return obj


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False


def from_data(cls: type[T], data: Any) -> T:
    """Build `cls` from data written by `to_data`; unknown keys are ignored, missing ones take defaults.

    Raises TypeError/ValueError with the dotted path of the offending key.
    """
    return _convert(cls, data, cls.__name__)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(errors[0] if errors else f"{path}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{path}: expected a table, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeError(f"{path}.{f.name}: missing")
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{path}: {exc}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{path}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{path}: expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        out = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{path}: expected a table, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise TypeError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ValueError(f"{path}: {value!r} is not one of {allowed}")
        return value
    return value


def schema_problem(value: Any, supported: int) -> str | None:
    """Why `value` is not the schema number this tool reads (None when it is): a document's `schema` is
    the integer `supported`; the string "1", 1.0 or true are refused as such, not as another version."""
    if type(value) is int:
        return None if value == supported else (
            f"version {value} is not supported (this tool reads schema {supported})")
    shown = f"the string {value!r}" if isinstance(value, str) else f"{type(value).__name__} {value!r}"
    return f"must be the integer {supported}, got {shown}"
