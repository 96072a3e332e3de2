"""Files out: read a target file with one-line errors, write one atomically.

The write goes to a temporary file beside the target, is fsynced and renamed over it, so the target is
always either the old complete file or the new complete one (the same discipline as profile.py's
`write_profile`, which is specific to profiles).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

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


def write_text_atomic(path: Path, text: str, *, mode: int | None = None) -> Path:
    """Replace `path` with `text` atomically; keeps the old file's permission bits (or uses `mode`)."""
    path = Path(path)
    try:
        keep_mode = path.stat().st_mode & 0o7777
    except OSError:
        keep_mode = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        final_mode = mode if mode is not None else keep_mode
        # mkstemp creates 0600; a config file should read like any other file the user creates.
        os.chmod(tmp_name, final_mode if final_mode is not None else 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


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
