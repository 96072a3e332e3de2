"""exllamav2 0.3.2's `config.py read()`, for config.json and preprocessor_config.json: the first key present
wins (with `text_config->` variants after all top-level ones when asked), `a->b` walks into a sub-object, an
int is accepted as a float and an integral float as an int; a missing key without a default and a value of
the wrong type are one-line ModelSpecErrors naming the file and the key.
"""

from __future__ import annotations

from typing import Any

from exlx_autocfg.errors import ModelSpecError

MISSING: Any = object()


def positive(where: str, name: str, value: int) -> int:
    """`value`, or a ModelSpecError naming the file and the key when it is not a positive count."""
    if value <= 0:
        raise ModelSpecError(f"{where}: {name} must be positive, got {value}")
    return value


def display(key: str) -> str:
    return key.replace("->", ".")


def _walk(config: dict, key: str, where: str) -> Any:
    node: Any = config
    parts = key.split("->")
    for i, part in enumerate(parts[:-1]):
        node = node.get(part)
        if not node:  # read(): a missing or empty sub-object skips the key
            return None
        if not isinstance(node, dict):
            raise ModelSpecError(
                f"{where}: {display('->'.join(parts[: i + 1]))} must be an object, got {node!r}"
            )
    return node.get(parts[-1])


def read_key(
    config: dict,
    kind: type,
    keys: list[str],
    default: Any = MISSING,
    *,
    text_config: bool = False,
    where: str = "config.json",
) -> Any:
    candidates = list(keys) + ([f"text_config->{k}" for k in keys] if text_config else [])
    for key in candidates:
        value = _walk(config, key, where)
        if value is None:
            continue
        if kind is float and type(value) is int:
            value = float(value)
        if kind is int and type(value) is float and value.is_integer():
            value = int(value)
        if kind is not object and (not isinstance(value, kind) or (type(value) is bool and kind is not bool)):
            raise ModelSpecError(
                f"{where}: {display(key)} must be {kind.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    if default is MISSING:
        also = [display(k) for k in candidates[1:]]
        hint = f" (exllamav2 0.3.2 also looks for {', '.join(also)}; none is set)" if also else ""
        raise ModelSpecError(f"{where}: missing {display(candidates[0])}{hint}")
    return default
