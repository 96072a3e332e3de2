"""Directory listings for tests that check a command left nothing behind."""

from __future__ import annotations

from pathlib import Path

from exlx_autocfg.atomic import LOCK_NAME


def user_files(directory: Path) -> list[str]:
    """The names in `directory`, without the lock file writes leave there (`atomic.LOCK_NAME`, by design:
    an OS file lock needs a file, and deleting it after use would race with the next writer)."""
    return sorted(p.name for p in directory.iterdir() if p.name != LOCK_NAME)


def tmp_leftovers(directory: Path) -> list[str]:
    """The temporary files an interrupted or failed atomic write would leave in `directory` (*.tmp)."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))
