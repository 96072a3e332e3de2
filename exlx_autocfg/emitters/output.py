"""Files out: read a target file with one-line errors, write one atomically.

Writes go through `exlx_autocfg.atomic`, as profiles do: the target is always either the old complete
file or the new complete one.
"""

from __future__ import annotations

from pathlib import Path

from exlx_autocfg import atomic
from exlx_autocfg.errors import InputError


def read_text(path: Path, *, missing_ok: bool = False) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def write_text_atomic(path: Path, text: str) -> Path:
    """Replace `path` with `text` atomically (`exlx_autocfg.atomic`); a failure is one InputError line."""
    try:
        return atomic.write_text_atomic(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


BLOCK_BEGIN = "# >>> exlx-autocfg: managed block, `exlx-autocfg emit --out` replaces it >>>"
BLOCK_END = "# <<< exlx-autocfg <<<"


def merge_block(old: str | None, block: str, source: str = "<file>") -> str:
    """`old` with exlx-autocfg's marked block replaced by `block` (or put first when there is none yet);
    every other line of the user's file stays as it was. For '#'-comment formats (sh, fish, PowerShell,
    text-generation-webui's CMD_FLAGS.txt)."""
    wrapped = f"{BLOCK_BEGIN}\n{block.rstrip(chr(10))}\n{BLOCK_END}\n"
    if not old:
        return wrapped
    lines = old.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BLOCK_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BLOCK_END]
    if not starts:
        return wrapped + "\n" + old
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise InputError(f"{source}: its exlx-autocfg block markers are broken (expected one begin and one "
                         "end line); fix or remove them")
    return "".join(lines[: starts[0]]) + wrapped + "".join(lines[ends[0] + 1 :])
