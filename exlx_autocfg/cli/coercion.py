"""Option values converted without pydantic, on typer releases that would import it.

typer 0.29 converts every non-flag option through a pydantic `TypeAdapter`, so the first option that gets a
value (its default counts) imports pydantic: about 0.1 s, a third of `detect --no-import`. This CLI declares
only flags and plain options (str, int, float, pathlib.Path, each possibly optional; no ranges, parsers or
path checks), whose conversion is one call: that is done here, in the words typer <= 0.28 (click) used for
a bad value. Anything else (an Enum, a list, a range, path checks) still goes to typer's own conversion.

This reaches into typer's private `core._TyperParameter` and `_coercion.RuntimeParam`; `install()` checks
they are there and does nothing otherwise (typer <= 0.28 needs nothing; a later typer that moved them falls
back to pydantic, slower but correct). tests/test_cli_startup.py fails when the hook stops applying.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAMES = {int: "integer", float: "float"}  # click's ParamType names, as typer <= 0.28 printed them


def _number(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a valid {_NAMES[kind]}.") from None

    return convert


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not a valid string.")


_TRUE = {"1", "true", "t", "yes", "y", "on"}  # click's BoolParamType words
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _flag(value: Any) -> bool:
    """A flag's value: typer skips flags that already hold a bool; --help's unset None never gets here."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"{value!r} is not a valid boolean.")


def _path(value: Any) -> Path:
    if isinstance(value, (str, Path)):
        return Path(value)
    raise ValueError(f"{value!r} is not a valid path.")


CONVERTERS: dict[type, Callable[[Any], Any]] = {
    bool: _flag,
    str: _text,
    int: _number(int),
    float: _number(float),
    Path: _path,
}


def plain_converter(annotation: Any, parameter_info: Any) -> Callable[[Any], Any] | None:
    """The conversion of a plain option (see the module docstring), or None to leave it to typer."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    convert = CONVERTERS.get(annotation)
    if convert is None:
        return None
    info = parameter_info
    constrained = (
        getattr(info, "parser", None) is not None
        or getattr(info, "min", None) is not None
        or getattr(info, "max", None) is not None
        or getattr(info, "allow_dash", False)
        or getattr(info, "path_type", None) is not None
        or getattr(info, "resolve_path", False)
        or getattr(info, "exists", False)
        or getattr(info, "writable", False)
        or not getattr(info, "readable", True)
        or not getattr(info, "file_okay", True)
        or not getattr(info, "dir_okay", True)
    )
    return None if constrained else convert


def install() -> bool:
    """Hook the plain conversion into typer; False when this typer needs no hook or has moved its parts."""
    try:
        from typer import _coercion, core
        from typer._click.exceptions import BadParameter

        param_class = core._TyperParameter
        base = _coercion.RuntimeParam
        original = param_class.get_runtime_param
    except (ImportError, AttributeError):
        return False
    if getattr(original, "_exlx_plain", False):
        return True

    @dataclass(frozen=True)
    class PlainRuntimeParam(base):  # type: ignore[misc, valid-type]
        convert: Callable[[Any], Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return self.convert(value)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            descriptor = getattr(self, "type_descriptor", None)
            convert = (
                plain_converter(descriptor.annotation, descriptor.parameter_info)
                if descriptor is not None and getattr(descriptor, "file_annotation", None) is None
                else None
            )
            if convert is not None:
                self._runtime_param = PlainRuntimeParam(
                    parameter_info=descriptor.parameter_info,
                    annotation=descriptor.annotation,
                    convert=convert,
                )
        return original(self)

    get_runtime_param._exlx_plain = True  # type: ignore[attr-defined]
    param_class.get_runtime_param = get_runtime_param
    return True
