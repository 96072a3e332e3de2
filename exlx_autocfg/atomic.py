"""Files in and out: what a path may be before exlx-autocfg reads or writes it, and atomic replacement.

One output-target policy for every write (profiles, `emit --out`), `output_target(path)`:
- a regular file is replaced atomically (temporary file beside it, fsync, rename, fsync the directory),
  its permission bits kept; a `.bak` copy is made only of a regular file;
- a path that does not exist yet is created the same way (missing parent directories too);
- a symlink is written THROUGH: its final target is replaced, atomically, beside the target; the link
  stays a link (a dangling link creates its target);
- the null device, this process's own stdout/stderr (/dev/stdout, /dev/fd/1, a terminal it writes to)
  and the controlling terminal are written to plainly: no temporary file, no rename, no `.bak`, nothing
  read first;
- any other character or block device, a FIFO or a socket is refused with one line (`OutputError`)
  before anything opens it: never replaced, never opened (opening a FIFO blocks; opening some devices
  acts).

Read-merge-write (`updating(path)`) runs under a lock (`filelock`, a `.exlx-autocfg.lock` file in the
target's directory), so concurrent writers into one file never lose each other's entries.

In: `open_regular(path)` / `read_regular(path)` refuse anything but a regular file by its type (stat
before open), then open non-blocking and check the opened file again, so a FIFO or a device named
`config.json` or `model.safetensors` cannot hang a command or be read as data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from exlx_autocfg.errors import InputError, OutputError, OutputLockedError, SpecialFileError

LOCK_NAME = ".exlx-autocfg.lock"
LOCK_TIMEOUT_S = 60.0  # a writer holds the lock for milliseconds; a minute means something is stuck

TargetKind = Literal["file", "new", "stream"]


# ---------------------------------------------------------------------------------------------- file kinds


def kind_of(mode: int) -> str:
    """What a stat mode is, in words ("a FIFO (named pipe)")."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# O_NONBLOCK: should the path turn into a FIFO between the stat and the open, the open does not wait for
# a writer (and the fstat below refuses it); it changes nothing for a regular file.
_READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0))


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for binary reading, only when it is a regular file (symlinks followed).

    Raises SpecialFileError for anything else (checked before opening, and again on the opened file,
    so a swap in between is caught too), FileNotFoundError / other OSError as the OS reports them.
    """
    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SpecialFileError(f"{path}: is {kind_of(st.st_mode)}, not a regular file")
    fd = os.open(path, _READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFileError(f"{path}: is {kind_of(st.st_mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], *, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see `open_regular`); OSError with errno EFBIG past `limit` bytes."""
    with open_regular(path) as fh:
        if limit is not None:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise OSError(errno.EFBIG, f"{size} bytes is more than the {limit} this file may have")
        return fh.read()


# -------------------------------------------------------------------------------------------- out: policy


@dataclass(frozen=True)
class Target:
    """Where a write to `named` goes. `path`: the file replaced (symlinks resolved) or the device written;
    `kind`: "file" (exists, regular), "new" (does not exist yet), "stream" (written plainly);
    `stream_fd`: 1 or 2 when the stream is this process's own stdout/stderr."""

    named: Path
    path: Path
    kind: TargetKind
    stream_fd: int | None = None


_STD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/(?:dev|proc/(?P<pid>self|thread-self|\d+))/fd/(?P<fd>\d+)")


def _own_fd_alias(path: Path) -> int | None:
    """The descriptor number when `path` names one of this process's descriptors (/dev/stdout,
    /dev/fd/N, /proc/self/fd/N); None for any other path."""
    text = os.path.normpath(os.path.abspath(path))
    if text in _STD_NAMES:
        return _STD_NAMES[text]
    m = _FD_PATH.fullmatch(text)
    if m and m.group("pid") in (None, "self", "thread-self", str(os.getpid())):
        return int(m.group("fd"))
    return None


def _same_file(st: os.stat_result, fd: int) -> bool:
    try:
        other = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino) or (
        stat.S_ISCHR(st.st_mode) and stat.S_ISCHR(other.st_mode) and st.st_rdev == other.st_rdev
    )


def _is_plain_device(st: os.stat_result) -> bool:
    """The null device or the controlling terminal: character devices that are safe to write to."""
    if not stat.S_ISCHR(st.st_mode):
        return False
    for name in (os.devnull, "/dev/tty"):
        try:
            known = os.stat(name)
        except OSError:
            continue
        if stat.S_ISCHR(known.st_mode) and known.st_rdev == st.st_rdev:
            return True
    return False


def output_target(path: str | os.PathLike[str]) -> Target:
    """Classify `path` for writing (module docstring); OutputError when it must not be written.

    Never opens anything. A directory is refused here: callers that accept `--out DIR` resolve the file
    name inside it first.
    """
    named = Path(path)
    alias = _own_fd_alias(named)
    if alias in (1, 2):
        return Target(named, named, "stream", stream_fd=alias)
    if alias is not None:
        # /dev/stdin, /dev/fd/5: a descriptor this process does not write its output to. Replacing
        # "the file behind it" would pull it from under whoever holds it open.
        raise OutputError(f"{named}: names file descriptor {alias} of this process; give a file's own path "
                          "or /dev/stdout")
    try:
        st = os.stat(named)  # follows symlinks: the policy applies to what the link points at
    except (FileNotFoundError, NotADirectoryError):  # (the write says which parent is not a directory)
        return Target(named, _resolved(named), "new")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{named}: is a symlink loop; not writing through it") from None
        raise OutputError(f"{named}: cannot inspect it: {exc.strerror or exc}") from None
    real = _resolved(named)
    if stat.S_ISREG(st.st_mode):
        return Target(named, real, "file")
    if _is_plain_device(st):
        return Target(named, real, "stream")
    for fd in (1, 2):
        if _same_file(st, fd) and not stat.S_ISDIR(st.st_mode):
            return Target(named, real, "stream", stream_fd=fd)
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{named}: is a directory, expected a file")
    via = f" (the symlink points at {real})" if real != named else ""
    raise OutputError(
        f"{named}: is {kind_of(st.st_mode)}{via}; refusing to write to it (give a regular file, a new "
        "path, or /dev/stdout)"
    )


def _resolved(path: Path) -> Path:
    """The final target of a symlink chain (the path itself when it is not a link)."""
    if not path.is_symlink():
        return path
    return Path(os.path.realpath(path))


# --------------------------------------------------------------------------------------------- out: write


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` under the output-target policy (module docstring), without reading it:
    atomic replacement for files (through symlinks), a plain write for stdout-like devices.

    Raises OutputError when the target is refused, OSError when the write fails; then the old file is
    untouched and no temporary file is left behind. Returns the path written (a symlink's target).
    """
    with updating(path, read=False) as out:
        return out.write(text)


def _write_stream(target: Target, data: bytes) -> None:
    if target.stream_fd is not None:
        stream = sys.stdout if target.stream_fd == 1 else sys.stderr
        stream.flush()
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stream (tests capture stdout this way)
            stream.write(data.decode("utf-8"))
            stream.flush()
        return
    fd = os.open(target.path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes) -> Path:
    """Atomically replace the regular file (or create the new one) at `path`; see write_text_atomic."""
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    _make_parent(path)
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


def _make_parent(path: Path) -> None:
    for parent in (path.parent, *path.parent.parents):  # mkdir would only say "File exists"
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a directory")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


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


# ------------------------------------------------------------------------------------ out: read-merge-write


_LOCKS: dict[str, object] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def directory_lock(directory: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exlx-autocfg lock of `directory` (an OS-level file lock, released if the process dies).

    One lock per directory: writers of different files there are serialised too, which costs
    milliseconds and keeps the user's directories to one lock file. Re-entrant within a process.
    Raises OutputLockedError after `timeout` seconds.
    """
    import filelock

    key = os.path.realpath(directory / LOCK_NAME)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = filelock.FileLock(key, timeout=timeout)
    try:
        lock.acquire(timeout=timeout)  # type: ignore[attr-defined]
    except filelock.Timeout:
        raise OutputLockedError(
            f"{directory}: another process has held {LOCK_NAME} for {timeout:g}s; is an exlx-autocfg "
            "write stuck?"
        ) from None
    try:
        yield
    finally:
        lock.release()  # type: ignore[attr-defined]


@dataclass
class Update:
    """An output being rewritten under its lock: `old` holds what the file held (None for a new file
    or a stream, which are never read); `write` puts the new text in place."""

    target: Target
    old: bytes | None

    def old_text(self) -> str | None:
        """The old content as text, BOM and line endings kept as they are (merges keep them too)."""
        if self.old is None:
            return None
        try:
            return self.old.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.target.named}: not UTF-8 text; not merging into it") from None

    def write(self, text: str, *, backup: bool = False) -> Path:
        """Replace the target with `text`; with `backup`, first copy the old file to `<name>.bak` beside
        it (regular files only; the .bak follows the same policy)."""
        data = text.encode("utf-8")
        if self.target.kind == "stream":
            _write_stream(self.target, data)
            return self.target.path
        if backup and self.old is not None:
            bak = output_target(self.target.path.with_name(self.target.path.name + ".bak"))
            if bak.kind == "stream":
                _write_stream(bak, self.old)
            else:
                _replace(bak.path, self.old)
        return _replace(self.target.path, data)

    @property
    def backup_name(self) -> str | None:
        """The .bak file's name, when `write(backup=True)` makes one."""
        return self.target.path.name + ".bak" if self.old is not None else None


@contextlib.contextmanager
def updating(path: str | os.PathLike[str], *, read: bool = True,
             lock_timeout: float = LOCK_TIMEOUT_S) -> Iterator[Update]:
    """Read-merge-write `path` under its directory's lock:

        with updating(path) as out:
            out.write(merge(out.old_text(), ...), backup=True)

    The target is classified (output_target) before and again under the lock; a regular file is read
    under the lock (unless `read` is False), so no other writer can slip in between the read and the
    replace. Raises
    OutputError (refused target, lock timeout) or OSError (the file system said no).
    """
    target = output_target(path)
    if target.kind == "stream":
        yield Update(target, None)
        return
    _make_parent(target.path)
    with directory_lock(target.path.parent, lock_timeout):
        target = output_target(path)
        old = read_regular(target.path) if read and target.kind == "file" else None
        yield Update(target, old)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace a file exlx-autocfg owns (its caches), outside the output policy: no lock (a
    cache entry is written whole by whoever gets there; readers see the old or the new one), no `.bak`."""
    return _replace(Path(path), data)
