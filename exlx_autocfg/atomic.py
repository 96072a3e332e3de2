"""Atomic file replacement, shared by profiles and emitted configs."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """`write_bytes_atomic` of `text` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` so that readers see the old complete file or the new one, never a part:
    a temporary file beside it, fsync, rename, fsync the directory. The replaced file's permission bits are
    kept (a new file gets the umask default: mkstemp's 0600 would surprise users).

    Raises OSError; then the old file is untouched and no temporary file is left behind.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    if path.parent.exists() and not path.parent.is_dir():  # mkdir would only say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform or filesystem, and not needed for
    # atomicity (readers already see old or new), so failures are ignored.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
