"""Files out: read a target file with one-line errors, write one atomically.

Every write goes through `exlx_autocfg.atomic`, as profiles do: its output-target policy (symlinks written
through, stdout-like devices written plainly, other devices / FIFOs / sockets refused), its lock around
read-merge-write, and its atomic replace, so the target is always either the old complete file or the new
complete one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from exlx_autocfg import atomic
from exlx_autocfg.errors import InputError, OutputError


def read_text(path: Path, *, missing_ok: bool = False) -> str | None:
    """A regular file's text, BOM and line endings as they are; special files are refused unopened."""
    try:
        raw = atomic.read_regular(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None


def write_text_atomic(path: Path, text: str) -> Path:
    """Replace `path` with `text` atomically (`exlx_autocfg.atomic`); a failure is one OutputError line."""
    try:
        return atomic.write_text_atomic(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def update_file(path: Path) -> Iterator[atomic.Update]:
    """`atomic.updating(path)` with one-line errors: read-merge-write under the directory's lock."""
    try:
        with atomic.updating(path) as update:
            yield update
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


BLOCK_BEGIN = "# >>> exlx-autocfg: managed block, `exlx-autocfg emit --out` replaces it >>>"
BLOCK_END = "# <<< exlx-autocfg <<<"


def merge_block(old: str | None, block: str, source: str = "<file>") -> str:
    """`old` with exlx-autocfg's marked block replaced by `block` (or put first when there is none yet);
    every other line of the user's file stays as it was, and so do its line endings and BOM. For
    '#'-comment formats (sh, fish, PowerShell, text-generation-webui's CMD_FLAGS.txt)."""
    style = TextStyle.of(old)
    old = style.strip(old)
    wrapped = f"{BLOCK_BEGIN}\n{block.rstrip(chr(10))}\n{BLOCK_END}\n"
    if not old:
        return style.apply(wrapped)
    lines = old.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BLOCK_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BLOCK_END]
    if not starts:
        return style.apply(wrapped + "\n" + old)
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise InputError(f"{source}: its exlx-autocfg block markers are broken (expected one begin and one "
                         "end line); fix or remove them")
    return style.apply("".join(lines[: starts[0]]) + wrapped + "".join(lines[ends[0] + 1 :]))


BOM = "\ufeff"


class TextStyle:
    """A file's byte-order mark and line endings, so a merge gives back the file in the style it had
    (a Windows editor's CRLF and UTF-8 BOM survive `emit --out`)."""

    def __init__(self, bom: bool = False, crlf: bool = False) -> None:
        self.bom, self.crlf = bom, crlf

    @classmethod
    def of(cls, text: str | None) -> TextStyle:
        if not text:
            return cls()
        body = text.removeprefix(BOM)
        crlf = body.count("\r\n")
        return cls(bom=text.startswith(BOM), crlf=crlf > 0 and crlf >= body.count("\n") - crlf)

    def strip(self, text: str | None) -> str | None:
        """`text` with the BOM removed and CRLF as LF: what parsers and the merge work on."""
        if text is None:
            return None
        text = text.removeprefix(BOM)
        return text.replace("\r\n", "\n") if self.crlf else text

    def apply(self, text: str) -> str:
        if self.crlf:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        return (BOM + text) if self.bom else text
