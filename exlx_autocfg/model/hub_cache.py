"""What `model.hub` keeps between plans: per Hub endpoint and repo, the commit each revision resolved to, the
branch list, and per commit the file listing (names and sizes) and the raw safetensors headers.

A commit is immutable, so everything under it is kept for good; refs (revision -> commit) and the branch
list are what a later online read refreshes. config.json, preprocessor_config.json and the index live in
huggingface_hub's own cache (`hf_hub_download`), also keyed by commit.

Layout, under `$EXLX_CACHE_DIR` or the user cache dir (platformdirs), `hub/<endpoint>/<org>--<name>/`:
`refs/<revision>` (a commit id), `branches.json`, `<commit>/files.json`, `<commit>/headers/<file>` (the 8-byte
length + JSON header, exactly the bytes at the start of the file). `EXLX_NO_CACHE=1` turns it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from exlx_autocfg.atomic import write_bytes_atomic

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.match(revision))


def cache_root() -> Path | None:
    if os.environ.get("EXLX_NO_CACHE", "") not in ("", "0"):
        return None
    base = os.environ.get("EXLX_CACHE_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("exlx-autocfg")
    return Path(base) / "hub"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


@dataclass(frozen=True)
class Listing:
    """The files of one commit: name -> size in bytes (None when the Hub did not say)."""

    commit: str
    files: dict[str, int | None]


class RepoCache:
    """The cache of one repo on one endpoint. Every method is a no-op (or a miss) when caching is off."""

    def __init__(self, endpoint: str, repo: str, root: Path | None = None) -> None:
        self.endpoint = endpoint
        self.repo = repo
        base = root if root is not None else cache_root()
        netloc = urlparse(endpoint)
        where = _slug(f"{netloc.netloc}{netloc.path}") if netloc.netloc else _slug(endpoint)
        self.dir = base / where / repo.replace("/", "--") if base is not None else None

    # ------------------------------------------------------------------------------------------- refs

    def commit_for(self, revision: str) -> str | None:
        if is_commit(revision):
            return revision
        text = self._read_text(Path("refs") / quote(revision, safe=""))
        return text.strip() if text and is_commit(text.strip()) else None

    def remember_ref(self, revision: str, commit: str) -> None:
        if not is_commit(revision):
            self._write(Path("refs") / quote(revision, safe=""), commit.encode())

    def cached_refs(self) -> dict[str, str]:
        """revision -> commit of every model revision read before (for 'what is cached' in errors)."""
        if self.dir is None or not (self.dir / "refs").is_dir():
            return {}
        out = {}
        for ref in sorted((self.dir / "refs").iterdir()):
            commit = ref.read_text().strip()
            listing = self.listing(commit) if is_commit(commit) else None
            if listing is not None and "config.json" in listing.files:  # a model, not a README-only main
                out[unquote(ref.name)] = commit
        return out

    def branches(self) -> dict[str, str] | None:
        text = self._read_text(Path("branches.json"))
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    def remember_branches(self, branches: dict[str, str]) -> None:
        self._write(Path("branches.json"), json.dumps(branches, indent=1).encode())

    # ------------------------------------------------------------------------------------ per commit

    def listing(self, commit: str) -> Listing | None:
        text = self._read_text(Path(commit) / "files.json")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return None
        files = {str(k): (v if isinstance(v, int) else None) for k, v in data["files"].items()}
        return Listing(commit, files)

    def remember_listing(self, listing: Listing) -> None:
        data = json.dumps({"files": listing.files}, indent=1).encode()
        self._write(Path(listing.commit) / "files.json", data)

    def header(self, commit: str, file_name: str) -> bytes | None:
        if self.dir is None:
            return None
        try:
            return (self.dir / commit / "headers" / quote(file_name, safe="")).read_bytes()
        except OSError:
            return None

    def remember_header(self, commit: str, file_name: str, data: bytes) -> None:
        self._write(Path(commit) / "headers" / quote(file_name, safe=""), data)

    # ----------------------------------------------------------------------------------------- files

    def _read_text(self, rel: Path) -> str | None:
        if self.dir is None:
            return None
        try:
            return (self.dir / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _write(self, rel: Path, data: bytes) -> None:
        if self.dir is None:
            return
        # A read-only or full cache costs network next time, never the plan.
        with contextlib.suppress(OSError):
            write_bytes_atomic(self.dir / rel, data)


__all__ = ["Listing", "RepoCache", "cache_root", "is_commit"]
