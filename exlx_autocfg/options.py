"""Checks for option values that arrive from Python as well as from the CLI.

The CLI's parser already gives ints and floats; a Python caller may pass anything, so the public functions
check the types themselves and raise `OptionError` naming the keyword argument (never a raw TypeError
from deep inside). The CLI shows the same error with the flag (`--context`).
"""

from __future__ import annotations

import math
from typing import Any

from exlx_autocfg.errors import OptionError

_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_kind(option: str, value: Any, kind: type, *, optional: bool = True) -> None:
    """OptionError unless `value` is a `kind` (None allowed when `optional`; a bool is never a number;
    an int is a float)."""
    if value is None and optional:
        return
    if kind in (int, float) and isinstance(value, bool):
        ok = False
    elif kind is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise OptionError(option, value, f"must be {_KIND_WORDS.get(kind, kind.__name__)}")


def check_kinds(values: dict[str, Any], kinds: dict[str, type]) -> None:
    for option, kind in kinds.items():
        if option in values:
            check_kind(option, values[option], kind)


def seconds(option: str, value: Any) -> float:
    """A timeout: a finite number of seconds > 0 (nan and inf are refused: a timeout that never ends is
    no timeout, and nan compares false with everything)."""
    check_kind(option, value, float, optional=False)
    if not math.isfinite(value) or value <= 0:
        raise OptionError(option, value, "must be a positive, finite number of seconds")
    return float(value)
