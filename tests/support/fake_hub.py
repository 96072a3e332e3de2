"""A local Hugging Face Hub on 127.0.0.1 for the real `huggingface_hub` client.

It speaks what huggingface.co speaks for the calls the client makes (read in huggingface_hub's hf_api.py,
file_download.py and utils/_http.py):

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}` (`?blobs=true` adds sizes and LFS info
  to `siblings`): `HfApi.model_info`.
- `GET /api/models/{repo}/refs`: `HfApi.list_repo_refs` (`branches`, `converts`, `tags`, each
  `{name, ref, targetCommit}`).
- `HEAD` / `GET /{repo}/resolve/{rev}/{file}`: a small (git, non-LFS) file is served directly with
  `ETag` (its git blob id), `X-Repo-Commit`, `Content-Length`, `Accept-Ranges`; an LFS file (safetensors,
  GGUF) answers `302 Found` to a signed URL on another origin (the "CDN", a second port here) with
  `X-Linked-Size`, `X-Linked-ETag` (its sha256) and `X-Repo-Commit`, as the Hub redirects to its CDN.
- Ranged `GET` on the CDN and on small files: `206` with `Content-Range: bytes a-b/total`, `416` with
  `Content-Range: bytes */total` past the end.
- Errors carry the Hub's `X-Error-Code` / `X-Error-Message` headers and `{"error": ...}` body:
  `RepoNotFound` (401 anonymous, 404 with a token), `RevisionNotFound` (404, "Invalid rev id: ..."),
  `EntryNotFound` (404, with `X-Repo-Commit`), `GatedRepo` (401 anonymous, 403 with a token that has no
  access), 401 "Invalid credentials in Authorization header" for an unknown token. Gated repos show their
  metadata (`model_info`, refs) to anyone, as the Hub does; only files need access.

One liberty: the LFS sha256 of a sparse test file is a digest of its header and size, not of its data (a
sparse 16 GB file has no data worth hashing; the client verifies no hash on range reads). Commit ids are
derived from the branch's file list the same way. Every body byte sent is counted (`bytes_served`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
README = b"---\nlicense: other\n---\n# A test model card\n"
GITATTRIBUTES = (b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                 b"*.gguf filter=lfs diff=lfs merge=lfs -text\n")
# A test guard, not Hub behaviour: a whole-file GET of anything bigger fails loudly (500) instead of
# streaming gigabytes of a sparse file; planning must never download weights.
MAX_FULL_GET = 16 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    """Keeps its open connections, so that `FakeHub.down()` also drops the client's pooled keep-alives."""

    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.clients: set[socket.socket] = set()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        self.clients.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        self.clients.discard(request)
        super().shutdown_request(request)

    def drop_clients(self) -> None:
        for sock in list(self.clients):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.clients.clear()


def files_of(directory: Path) -> dict[str, Path | bytes]:
    """A model directory (tests/support/model_dirs.py make_model_dir) as the files of one branch."""
    files = readme_only()
    files.update({p.name: p for p in sorted(Path(directory).iterdir()) if p.is_file()})
    return files


def readme_only() -> dict[str, Path | bytes]:
    return {".gitattributes": GITATTRIBUTES, "README.md": README}


@dataclass
class _File:
    name: str
    source: Path | bytes
    size: int
    lfs: bool
    oid: str  # sha256 (LFS) or git blob sha1

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with open(self.source, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)


def _make_file(name: str, source: Path | bytes) -> _File:
    lfs = name.endswith(LFS_SUFFIXES)
    if isinstance(source, bytes):
        size = len(source)
        head = source[:65536]
    else:
        size = source.stat().st_size
        with open(source, "rb") as fh:
            head = fh.read(65536)
    if lfs:
        oid = hashlib.sha256(head + str(size).encode()).hexdigest()
    else:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return _File(name, source, size, lfs, oid)


@dataclass
class FakeRepo:
    repo_id: str
    branches: dict[str, dict[str, _File]]
    commits: dict[str, str]  # branch -> commit
    gated: bool = False
    private: bool = False

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return self.commits[revision]
        if revision in self.commits.values():
            return revision
        return None

    def files_at(self, commit: str) -> dict[str, _File]:
        branch = next(b for b, c in self.commits.items() if c == commit)
        return self.branches[branch]


@dataclass
class Served:
    method: str
    path: str
    status: int
    body_bytes: int
    range: str | None = None
    authorized: bool = False


@dataclass
class FakeHub:
    """`with FakeHub() as hub:` starts the Hub and its CDN on ephemeral ports of 127.0.0.1."""

    tokens: dict[str, set[str]] = field(default_factory=dict)  # token -> repos it may read (gated/private)
    delay_s: float = 0.0  # sleep before answering API calls (timeouts)
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    _log: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0  # requests being answered: their log entry is written after the body
        self._servers: list[_Server] = []
        self.endpoint = ""
        self.cdn = ""

    # ------------------------------------------------------------------------------------------ setup

    def add_repo(
        self,
        repo_id: str,
        branches: dict[str, dict[str, Path | bytes]],
        *,
        gated: bool = False,
        private: bool = False,
    ) -> FakeRepo:
        built: dict[str, dict[str, _File]] = {}
        commits: dict[str, str] = {}
        for branch, files in branches.items():
            built[branch] = {name: _make_file(name, src) for name, src in files.items()}
            listing = "\n".join(f"{f.name} {f.size} {f.oid}" for f in built[branch].values())
            commits[branch] = hashlib.sha1(f"{repo_id}\n{branch}\n{listing}".encode()).hexdigest()
        if "main" not in built:  # every Hub repo has a main branch (a README at least)
            built["main"] = {n: _make_file(n, s) for n, s in readme_only().items()}
            commits["main"] = hashlib.sha1(f"{repo_id}\nmain\nreadme".encode()).hexdigest()
        repo = FakeRepo(repo_id, built, commits, gated=gated, private=private)
        self.repos[repo_id] = repo
        return repo

    def __enter__(self) -> FakeHub:
        hub_server = _Server(("127.0.0.1", 0), _handler(self, cdn=False))
        cdn_server = _Server(("127.0.0.1", 0), _handler(self, cdn=True))
        for server in (hub_server, cdn_server):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(server)
        self.endpoint = f"http://127.0.0.1:{hub_server.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{cdn_server.server_address[1]}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    def down(self) -> None:
        """Stop both servers: from now on a connection is refused (an unreachable Hub)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.drop_clients()
        self._servers.clear()

    # ------------------------------------------------------------------------------------------ counters

    @property
    def log(self) -> list[Served]:
        """Every request answered since the last reset, once no answer is still being written."""
        with self._lock:
            self._settled()
            return list(self._log)

    def _settled(self) -> None:
        """Wait (a little) until no answer is still being written: the client may act on a response before the
        handler thread has logged it."""
        self._idle.wait_for(lambda: self._in_flight == 0, timeout=5)

    @property
    def bytes_served(self) -> int:
        with self._lock:
            self._settled()
            return sum(s.body_bytes for s in self._log)

    def reset(self) -> None:
        with self._lock:
            self._settled()
            self._log.clear()

    def begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def end(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._idle.notify_all()

    def record(self, served: Served) -> None:
        with self._lock:
            self._log.append(served)


def _handler(hub: FakeHub, *, cdn: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._answer("GET")

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        def _answer(self, method: str) -> None:
            hub.begin()
            try:
                self._dispatch(method)
            finally:
                hub.end()

        # ------------------------------------------------------------------------------ plumbing

        def _send(self, method: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  authorized: bool = False) -> None:
            self.send_response(status)
            headers = dict(headers or {})
            headers.setdefault("Content-Length", str(len(body)))
            headers.setdefault("X-Request-Id", "Root=1-fake")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            sent = 0
            if method != "HEAD" and body:
                try:
                    for i in range(0, len(body), 65536):
                        self.wfile.write(body[i : i + 65536])
                        sent += len(body[i : i + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: it has what it wanted
            hub.record(Served(method, self.path, status, sent, self.headers.get("Range"), authorized))

        def _error(self, method: str, status: int, code: str | None, message: str,
                   extra: dict[str, str] | None = None) -> None:
            headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            headers.update(extra or {})
            self._send(method, status, json.dumps({"error": message}).encode(), headers)

        def _token(self) -> tuple[str | None, bool]:
            """(the bearer token, whether it is known); an unknown token is refused like the Hub does."""
            auth = self.headers.get("Authorization") or ""
            if not auth.lower().startswith("bearer "):
                return None, True
            token = auth.split(" ", 1)[1].strip()
            return token, token in hub.tokens

        def _dispatch(self, method: str) -> None:
            url = urlparse(self.path)
            if cdn:
                return self._cdn(method, url.path)
            if hub.delay_s and url.path.startswith("/api/"):
                threading.Event().wait(hub.delay_s)
            if url.path == "/api/agent-harnesses":  # the client's agent registry (telemetry): none here
                body = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
                return self._send(method, 200, body, {"Content-Type": "application/json; charset=utf-8"})
            token, known = self._token()
            if not known:
                return self._error(method, 401, None, "Invalid credentials in Authorization header")
            match = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(refs)|/revision/(.+))?$", url.path)
            if match and method == "GET":
                repo_id, refs, revision = unquote(match.group(1)), match.group(2), match.group(3)
                return self._api(method, repo_id, refs, revision, url.query, token)
            match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
            if match:
                return self._resolve(method, match.group(1), unquote(match.group(2)), unquote(match.group(3)),
                                     token)
            self._error(method, 404, None, "Sorry, we can't find the page you are looking for.")

        def _repo(self, method: str, repo_id: str, token: str | None, *, files: bool) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            allowed = repo is not None and token is not None and repo_id in hub.tokens.get(token, set())
            if repo is None or (repo.private and not allowed):
                self._error(method, 404 if token else 401, "RepoNotFound", "Repository not found")
                return None
            if repo.gated and files and not allowed:
                if token is None:
                    msg = (f"Access to model {repo_id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.")
                    self._error(method, 401, "GatedRepo", msg)
                else:
                    msg = (f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                           f"Visit {hub.endpoint}/{repo_id} to ask for access.")
                    self._error(method, 403, "GatedRepo", msg)
                return None
            return repo

        # ------------------------------------------------------------------------------ API

        def _api(self, method: str, repo_id: str, refs: str | None, revision: str | None, query: str,
                 token: str | None) -> None:
            repo = self._repo(method, repo_id, token, files=False)
            if repo is None:
                return
            if refs:
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                            for b, c in repo.commits.items()]
                body = {"branches": branches, "converts": [], "tags": []}
                return self._send(method, 200, json.dumps(body).encode(),
                                  {"Content-Type": "application/json; charset=utf-8"})
            rev = revision or "main"
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(method, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            blobs = parse_qs(query).get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for f in repo.files_at(commit).values():
                entry: dict[str, Any] = {"rfilename": f.name}
                if blobs:
                    entry["blobId"] = hashlib.sha1(f.oid.encode()).hexdigest() if f.lfs else f.oid
                    entry["size"] = f.size
                    if f.lfs:
                        entry["lfs"] = {"sha256": f.oid, "size": f.size, "pointerSize": 134}
                siblings.append(entry)
            body = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit,
                "lastModified": "2024-05-01T12:00:00.000Z",
                "createdAt": "2024-04-01T12:00:00.000Z",
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "exllamav2",
                "tags": ["exl2", "safetensors"],
                "siblings": siblings,
                "spaces": [],
            }
            if blobs:
                body["usedStorage"] = sum(f.size for f in repo.files_at(commit).values())
            self._send(method, 200, json.dumps(body).encode(),
                       {"Content-Type": "application/json; charset=utf-8"})

        # ------------------------------------------------------------------------------ files

        def _resolve(self, method: str, repo_id: str, revision: str, name: str, token: str | None) -> None:
            repo = self._repo(method, repo_id, token, files=True)
            if repo is None:
                return
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(method, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            f = repo.files_at(commit).get(name)
            if f is None:
                return self._error(method, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
            if f.lfs:
                location = f"{hub.cdn}/repos/{repo_id}/{commit}/{name}?X-Amz-Signature=fake"
                body = f"Found. Redirecting to {location}".encode()
                return self._send(method, 302, body, {
                    "Location": location,
                    "X-Repo-Commit": commit,
                    "X-Linked-Size": str(f.size),
                    "X-Linked-ETag": f'"{f.oid}"',
                    "ETag": f'W/"{hashlib.sha1(body).hexdigest()[:20]}"',
                    "Content-Type": "text/plain; charset=utf-8",
                    "Vary": "Origin, Accept",
                }, authorized=token is not None)
            self._file(method, f, {"X-Repo-Commit": commit, "ETag": f'"{f.oid}"'}, token is not None)

        def _cdn(self, method: str, path: str) -> None:
            match = re.match(r"^/repos/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)$", path)
            repo = hub.repos.get(unquote(match.group(1))) if match else None
            if repo is None or match is None or match.group(2) not in repo.commits.values():
                return self._send(method, 403, b"<Error><Code>AccessDenied</Code></Error>",
                                  {"Content-Type": "application/xml"})
            f = repo.files_at(match.group(2)).get(unquote(match.group(3)))
            if f is None:
                return self._send(method, 404, b"<Error><Code>NoSuchKey</Code></Error>",
                                  {"Content-Type": "application/xml"})
            self._file(method, f, {"ETag": f'"{f.oid}"'}, self.headers.get("Authorization") is not None)

        def _file(self, method: str, f: _File, headers: dict[str, str], authorized: bool) -> None:
            headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            wanted = self.headers.get("Range")
            unsatisfiable = {**headers, "Content-Range": f"bytes */{f.size}"}
            if wanted is None:
                if method == "HEAD":
                    sized = {**headers, "Content-Length": str(f.size)}
                    return self._send(method, 200, b"", sized, authorized)
                if f.size > MAX_FULL_GET:
                    refusal = b"fake hub: whole-file GET of a weights file"
                    return self._send(method, 500, refusal, {}, authorized)
                return self._send(method, 200, f.read(0, f.size), headers, authorized)
            match = re.match(r"^bytes=(\d+)-(\d*)$", wanted.strip())
            if not match:
                return self._send(method, 416, b"", unsatisfiable, authorized)
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else f.size - 1, f.size - 1)
            if start >= f.size or end < start:
                return self._send(method, 416, b"", unsatisfiable, authorized)
            body = b"" if method == "HEAD" else f.read(start, end + 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
            headers["Content-Length"] = str(end - start + 1)
            self._send(method, 206, body, headers, authorized)

    return Handler
