"""Models on the Hugging Face Hub, planned before the download: `hf:ORG/REPO[@REVISION]`.

Only config.json (preprocessor_config.json for vision models), `model.safetensors.index.json` when present,
and the header of every top-level `*.safetensors` file are read, the headers by HTTP range requests; never
tensor data. Everything goes through the real `huggingface_hub` client: `HfApi.model_info` (revision ->
commit, file names and sizes), `HfApi.list_repo_refs` (branches), `hf_hub_download` (the small JSON files,
into the client's own cache) and, for the headers, the client's HTTP session, URL builder, auth headers and
error mapping (`get_session`, `hf_hub_url`, `build_hf_headers`, `hf_raise_for_status`): the same calls as
`HfApi.parse_safetensors_file_metadata`, which cannot be used as is because it returns the parsed JSON and
the fingerprint hashes the raw header bytes.

The spec is built by `directory.spec_from_parts`, the function that builds a model directory's spec, from
the same bytes: a revision read here and the same files downloaded give equal tensors and fingerprints.

Caching (`hub_cache`): headers and listings per commit, refs per revision; a commit id costs no network the
second time, a branch or tag one `model_info` call (to see whether it moved). `HF_HUB_OFFLINE=1` reads the
cache alone. `HF_TOKEN` or the client's saved login authenticates; `HF_ENDPOINT` selects a mirror.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exlx_autocfg.errors import HubError, ModelSpecError, UsageError
from exlx_autocfg.model.config import MAX_CONFIG_BYTES, parse_json_bytes
from exlx_autocfg.model.directory import PREPROCESSOR_FILE, needs_preprocessor, spec_from_parts
from exlx_autocfg.model.hub_cache import Listing, RepoCache, is_commit
from exlx_autocfg.model.safetensors import SafetensorsHeader, header_length, parse_header_bytes
from exlx_autocfg.model.spec import HubSource, ModelSpec

HUB_PREFIX = "hf:"
DEFAULT_ENDPOINT = "https://huggingface.co"
# First range request per safetensors file: the size huggingface_hub's parse_safetensors_file_metadata asks
# for (hf_api.py: "97% of safetensors files have a metadata size < 100kb"); bigger headers take one more.
FIRST_READ_BYTES = 100_001
# huggingface_hub refuses headers over constants.SAFETENSORS_MAX_HEADER_LENGTH (25 MB); so do we, before
# fetching them.
MAX_HUB_HEADER_BYTES = 25_000_000
DEFAULT_TIMEOUT_S = 10.0  # huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT default
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
LOGIN_HINT = "log in with `hf auth login` (older clients: `huggingface-cli login`) or set HF_TOKEN"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

# (what is being read, done, total): called as files and branches are read, for a progress bar.
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------ references


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None = None  # None: every branch (`plan`) or main

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.strip().lower().startswith(HUB_PREFIX)


def parse_hub_ref(text: str) -> HubRef:
    """`hf:ORG/REPO[@REVISION]` (a branch, tag or commit); UsageError for anything else."""
    body = text.strip()[len(HUB_PREFIX) :]
    repo, at, revision = body.partition("@")
    repo = repo.strip().strip("/")
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        raise UsageError(f"{text.strip()}: not a Hugging Face model reference; use hf:ORG/REPO[@REVISION]")
    if at and not revision.strip():
        raise UsageError(f"{text.strip()}: empty revision after '@' (give a branch, tag or commit)")
    return HubRef(repo, revision.strip() or None)


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Branch:
    name: str
    commit: str


@dataclass
class BranchRead:
    """One branch of a repo as `read_branches` found it: a spec to plan, or why it was skipped."""

    revision: str
    commit: str
    spec: ModelSpec | None = None
    skipped: str | None = None  # why no spec: not EXL2, no config.json, ...
    skip_code: str | None = None  # a finding code (findings.CODES)
    download_bytes: int = 0  # size of its *.safetensors files
    bytes_read: int = 0


@dataclass
class BranchListing:
    repo: str
    endpoint: str
    branches: list[BranchRead]
    bytes_read: int  # the whole listing: refs, every model_info, config, header
    bytes_cached: int
    offline: bool


# ------------------------------------------------------------------------------------------ byte meter


class _Meter:
    def __init__(self) -> None:
        self.bytes = 0
        self.cached = 0
        self.files: list[str] = []


_METERS: list[_Meter] = []
_METER_LOCK = threading.Lock()
_STREAM_CLASSES: dict[str, type] = {}


def _http() -> Any:
    """The HTTP library huggingface_hub's session is built on (httpx, or httpx2 in its 2.x releases)."""
    from huggingface_hub.utils import get_session

    return sys.modules[type(get_session()).__module__.split(".")[0]]


def _counting_stream(stream: Any, meters: tuple[_Meter, ...]) -> Any:
    http = _http()
    cls = _STREAM_CLASSES.get(http.__name__)
    if cls is None:

        class Counting(http.SyncByteStream):  # type: ignore[name-defined,misc]
            def __init__(self, inner: Any, meters: tuple[_Meter, ...]) -> None:
                self.inner, self.meters = inner, meters

            def __iter__(self) -> Iterator[bytes]:
                for chunk in self.inner:
                    with _METER_LOCK:
                        for meter in self.meters:
                            meter.bytes += len(chunk)
                    yield chunk

            def close(self) -> None:
                self.inner.close()

        cls = _STREAM_CLASSES[http.__name__] = Counting
    return cls(stream, meters)


def _count_response(response: Any) -> None:
    """Response hook on the client's session: counts the body bytes received while a meter is active."""
    with _METER_LOCK:
        meters = tuple(_METERS)
    if meters:
        response.stream = _counting_stream(response.stream, meters)


@contextmanager
def _metering(meter: _Meter) -> Iterator[_Meter]:
    from huggingface_hub.utils import get_session

    hooks = get_session().event_hooks["response"]
    if _count_response not in hooks:
        hooks.append(_count_response)
    with _METER_LOCK:
        _METERS.append(meter)
    try:
        yield meter
    finally:
        with _METER_LOCK:
            _METERS.remove(meter)


# ------------------------------------------------------------------------------------------ the reader


def _env_offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _env_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _hf_cache_dir() -> str:
    """huggingface_hub's cache directory as its constants compute it, from the environment now (the
    constants are frozen when the client is imported)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(os.path.expandvars(explicit))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")


def _describe(files: dict[str, int | None], limit: int = 6) -> str:
    names = sorted(files)
    shown = ", ".join(names[:limit]) + (f", … ({len(names)} files)" if len(names) > limit else "")
    return f"files: {shown}" if names else "no files"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _weights(files: dict[str, int | None]) -> list[str]:
    """The revision's top-level safetensors files, in name order (exllamav2 globs *.safetensors there)."""
    return sorted(n for n in files if "/" not in n and n.endswith(".safetensors"))


class HubReader:
    """Reads model specs and branch lists from one Hub endpoint. Arguments default to the environment:
    HF_ENDPOINT, HF_TOKEN / the saved login, HF_HUB_OFFLINE, HF_HUB_DOWNLOAD_TIMEOUT."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        token: str | bool | None = None,
        offline: bool | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        try:
            from huggingface_hub import HfApi
        except ImportError:  # a dependency, but a broken install should still say so in one line
            raise HubError("reading hf: models needs the huggingface_hub package "
                           "(pip install huggingface_hub)") from None
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token
        self.offline = _env_offline() if offline is None else offline
        self.timeout = _env_timeout() if timeout is None else timeout
        self.progress = progress
        self.hf_cache = _hf_cache_dir()
        self.api = HfApi(endpoint=self.endpoint, token=token)

    # ------------------------------------------------------------------------------- public

    def read(self, repo: str, revision: str | None = None) -> ModelSpec:
        """The spec of `repo` at `revision` (default: main), from config.json and the safetensors headers."""
        revision = revision or "main"
        meter = _Meter()
        with _metering(meter):
            listing = self._listing(repo, revision)
            return self._read(repo, revision, listing, meter)

    def read_branches(self, repo: str) -> BranchListing:
        """Every branch of `repo`: those holding an EXL2 model read as specs, the others skipped with why."""
        total = _Meter()
        with _metering(total):
            branches = sorted(self._branches(repo), key=lambda b: _natural(b.name))
            reads: list[BranchRead] = []
            for i, branch in enumerate(branches):
                self._tick(f"{repo}: branch {branch.name}", i, len(branches))
                reads.append(self._read_branch(repo, branch))
            self._tick(f"{repo}: {len(branches)} branches", len(branches), len(branches))
        return BranchListing(repo, self.endpoint, reads, total.bytes, total.cached, self.offline)

    # ------------------------------------------------------------------------------- revisions

    def _cache(self, repo: str) -> RepoCache:
        return RepoCache(self.endpoint, repo)

    def _listing(self, repo: str, revision: str) -> Listing:
        """The commit `revision` resolves to and its files (names, sizes)."""
        cache = self._cache(repo)
        cached_commit = cache.commit_for(revision) if (is_commit(revision) or self.offline) else None
        cached = cache.listing(cached_commit) if cached_commit else None
        if cached is not None:
            return cached
        if self.offline:
            raise self._not_cached(repo, revision, cache)
        info = self._call(
            lambda: self.api.model_info(repo, revision=revision, files_metadata=True, timeout=self.timeout),
            repo,
            revision,
        )
        if not info.sha or not is_commit(info.sha):
            raise HubError(f"hf:{repo}@{revision}: the Hub at {self.endpoint} sent no commit id for it")
        listing = Listing(info.sha, {s.rfilename: s.size for s in info.siblings or []})
        cache.remember_listing(listing)
        cache.remember_ref(revision, listing.commit)
        return listing

    def _branches(self, repo: str) -> list[Branch]:
        cache = self._cache(repo)
        if self.offline:
            known = cache.branches()
            if known is None:
                raise self._not_cached(repo, None, cache)
            return [Branch(n, c) for n, c in known.items()]
        refs = self._call(lambda: self.api.list_repo_refs(repo), repo, None)
        branches = [Branch(b.name, b.target_commit) for b in refs.branches]
        cache.remember_branches({b.name: b.commit for b in branches})
        for b in branches:
            cache.remember_ref(b.name, b.commit)
        return branches

    # ------------------------------------------------------------------------------- one revision

    def _read(
        self, repo: str, revision: str, listing: Listing, meter: _Meter, *, raw_config: bytes | None = None,
        headers_read: dict[str, SafetensorsHeader] | None = None,
    ) -> ModelSpec:
        """The spec of one revision; `raw_config` and `headers_read`: what the caller already read of it."""
        where = f"hf:{repo}@{revision}"
        files, commit = listing.files, listing.commit
        if CONFIG_FILE not in files:
            raise ModelSpecError(
                f"{where} (commit {commit[:12]}): no config.json in this revision ({_describe(files)}); "
                f"not a model revision (`plan hf:{repo}` lists the branches that are)"
            )
        weights = _weights(files)
        if not weights:
            raise ModelSpecError(
                f"{where} (commit {commit[:12]}): no .safetensors files ({_describe(files)})"
            )
        if raw_config is None:
            raw_config = self._small_file(repo, commit, CONFIG_FILE, files, where, meter)
        config = parse_json_bytes(raw_config, f"{where}/{CONFIG_FILE}")
        index = None
        if INDEX_FILE in files:
            index = parse_json_bytes(self._small_file(repo, commit, INDEX_FILE, files, where, meter),
                                     f"{where}/{INDEX_FILE}")
            self._check_index_shards(where, index, files)
        raw_prep, preprocessor = b"", None
        if needs_preprocessor(config) and PREPROCESSOR_FILE in files:
            raw_prep = self._small_file(repo, commit, PREPROCESSOR_FILE, files, where, meter)
            preprocessor = parse_json_bytes(raw_prep, f"{where}/{PREPROCESSOR_FILE}")
        headers = []
        for i, name in enumerate(weights):
            self._tick(f"{where}: {name}", i, len(weights))
            header = (headers_read or {}).get(name)
            if header is None:
                header = self._header(repo, commit, name, files.get(name), where, meter)
            headers.append((name, header))
        self._tick(f"{where}: {len(weights)} headers", len(weights), len(weights))
        spec = spec_from_parts(
            name=f"{repo}@{revision}",
            path=None,
            source="hub",
            where=where,
            raw_config=raw_config,
            config=config,
            config_where=f"{where}/{CONFIG_FILE}",
            headers=headers,
            index=index,
            index_where=f"{where}/{INDEX_FILE}",
            present=set(files),
            raw_preprocessor=raw_prep,
            preprocessor=preprocessor,
            preprocessor_where=f"{where}/{PREPROCESSOR_FILE}",
            hf_repo=repo,
        )
        source = HubSource(
            repo=repo,
            revision=revision,
            commit=commit,
            endpoint=self.endpoint,
            files=tuple(meter.files),
            bytes_read=meter.bytes,
            bytes_cached=meter.cached,
            weights_bytes=sum(files.get(n) or 0 for n in weights),
            offline=self.offline,
        )
        return dataclasses.replace(spec, hub=source)

    def _check_index_shards(self, where: str, index: Any, files: dict[str, int | None]) -> None:
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ModelSpecError(f"{where}/{INDEX_FILE}: no weight_map object")
        for shard in sorted({str(v) for v in weight_map.values()}):
            if shard not in files:
                shards = sorted(n for n in files if n.endswith(".safetensors"))
                raise ModelSpecError(
                    f"{where}/{INDEX_FILE}: names shard {shard!r}, which is not in the repo "
                    f"(its safetensors files: {', '.join(shards) or 'none'})"
                )

    def _read_branch(self, repo: str, branch: Branch) -> BranchRead:
        meter = _Meter()
        with _metering(meter):
            listing = self._listing(repo, branch.commit)
            files = listing.files
            weights = _weights(files)
            size = sum(files.get(n) or 0 for n in weights)
            out = BranchRead(branch.name, branch.commit, download_bytes=size)
            gguf = sorted(n for n in files if n.endswith(".gguf"))
            if gguf and not weights:
                out.skipped, out.skip_code = f"GGUF files ({gguf[0]}…), not EXL2", "hub.skip.gguf"
            elif CONFIG_FILE not in files:
                out.skipped, out.skip_code = f"no config.json ({_describe(files, 3)})", "hub.skip.no_config"
            elif not weights:
                out.skipped = f"no .safetensors files ({_describe(files, 3)})"
                out.skip_code = "hub.skip.no_safetensors"
            else:
                self._classify(repo, branch, listing, meter, out)
        out.bytes_read = meter.bytes
        return out

    def _classify(self, repo: str, branch: Branch, listing: Listing, meter: _Meter, out: BranchRead) -> None:
        """Read the branch as a spec when it is EXL2; otherwise say why not, reading as little as possible."""
        where = f"hf:{repo}@{branch.name}"
        headers_read: dict[str, SafetensorsHeader] = {}
        try:
            raw = self._small_file(repo, listing.commit, CONFIG_FILE, listing.files, where, meter)
            config = parse_json_bytes(raw, f"{where}/{CONFIG_FILE}")
            qc = config.get("quantization_config") if isinstance(config, dict) else None
            method = qc.get("quant_method") if isinstance(qc, dict) else None
            if method is not None and str(method).lower() != "exl2":
                out.skipped = f"a {method} checkpoint (quantization_config.quant_method), not EXL2"
                out.skip_code = "hub.skip.other_quant"
                return
            if method is None:
                # exllamav2's converter writes quantization_config (compile.py); older EXL2 quants lack it, so
                # look for EXL2 tensors in the first header before reading the rest.
                first = _weights(listing.files)[0]
                header = self._header(repo, listing.commit, first, listing.files.get(first), where, meter)
                headers_read[first] = header
                if not any(name.endswith(".q_weight") for name in header.tensors):
                    out.skipped = ("an unquantized checkpoint (no quantization_config, "
                                   "no EXL2 q_weight tensors)")
                    out.skip_code = "hub.skip.not_exl2"
                    return
            out.spec = self._read(repo, branch.name, listing, meter, raw_config=raw,
                                  headers_read=headers_read)
        except ModelSpecError as exc:  # this branch's files are broken: skip it, plan the others
            out.skipped, out.skip_code = exc.one_line(), "hub.skip.unreadable"

    # ------------------------------------------------------------------------------- files

    def _small_file(
        self, repo: str, commit: str, name: str, files: dict[str, int | None], where: str, meter: _Meter
    ) -> bytes:
        """config.json and friends, through hf_hub_download into the client's cache (keyed by commit)."""
        from huggingface_hub import try_to_load_from_cache

        size = files.get(name)
        if size is not None and size > MAX_CONFIG_BYTES:
            raise ModelSpecError(f"{where}/{name}: {size} bytes is too large for a {name}")
        cached = try_to_load_from_cache(repo, name, cache_dir=self.hf_cache, revision=commit)
        path = self._call(
            lambda: self.api.hf_hub_download(
                repo, name, revision=commit, cache_dir=self.hf_cache, local_files_only=self.offline,
                etag_timeout=self.timeout,
            ),
            repo,
            commit,
            file=name,
            label=where,
        )
        data = Path(path).read_bytes()
        _note(meter, name, len(data) if isinstance(cached, str) else 0)
        return data

    def _header(
        self, repo: str, commit: str, name: str, size: int | None, where: str, meter: _Meter
    ) -> SafetensorsHeader:
        """The 8-byte length + JSON header of one safetensors file, by range requests (or from the cache)."""
        label = Path(f"{where}/{name}")
        cache = self._cache(repo)
        data = cache.header(commit, name)
        if data is not None and size is not None:
            _note(meter, name, len(data))
            return parse_header_bytes(label, data, size)
        _note(meter, name, 0)
        if self.offline:
            raise self._not_cached(repo, commit, cache, file=name)
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(repo, name, revision=commit, endpoint=self.endpoint)
        first = min(FIRST_READ_BYTES, size) if size else FIRST_READ_BYTES
        data, total = self._range(repo, commit, name, url, 0, first, where)
        size = size if size is not None else total
        if size is None:
            raise HubError(f"{label}: the Hub sent no size for this file")
        need = 8 + header_length(label, data[:8], size, limit=MAX_HUB_HEADER_BYTES)
        if len(data) < need:
            more, _ = self._range(repo, commit, name, url, len(data), need, where)
            data += more
        data = data[:need]
        header = parse_header_bytes(label, data, size)
        cache.remember_header(commit, name, data)
        return header

    def _range(
        self, repo: str, commit: str, name: str, url: str, start: int, end: int, where: str
    ) -> tuple[bytes, int | None]:
        """Bytes [start, end) of `url` and the file's total size (Content-Range). Streams, so a server that
        ignores the range costs only the bytes wanted, never the file."""
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        def fetch() -> tuple[bytes, int | None]:
            headers = {**build_hf_headers(token=self.token), "Range": f"bytes={start}-{end - 1}"}
            with get_session().stream("GET", url, headers=headers, timeout=self.timeout,
                                      follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                hf_raise_for_status(response)
                total = _content_range_total(response.headers.get("Content-Range"))
                skip = start if response.status_code == 200 else 0  # 200: the whole file from byte 0
                want = end - start
                chunks: list[bytes] = []
                got = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    got += len(chunk)
                    if got >= skip + want:
                        break
                if total is None and response.status_code == 200:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                return b"".join(chunks)[skip : skip + want], total

        return self._call(fetch, repo, commit, file=name, label=where)

    # ------------------------------------------------------------------------------- errors

    def _call(
        self,
        fn: Callable[[], Any],
        repo: str,
        revision: str | None,
        *,
        file: str | None = None,
        label: str | None = None,
    ) -> Any:
        """Run one client call; its exceptions become one-line HubErrors that say what to do. `label`: how
        the user named the revision (`hf:ORG/REPO@4.0bpw`, not the commit it resolved to)."""
        from huggingface_hub import errors

        http = _http()
        ref = label or f"hf:{repo}" + (f"@{revision}" if revision else "")
        try:
            return fn()
        except errors.GatedRepoError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 403:
                raise HubError(
                    f"{ref}: gated repo, and this token has not been granted access",
                    hint=f"request access at {self.endpoint}/{repo}",
                ) from None
            raise HubError(
                f"{ref}: gated repo: the Hub needs a token of an account that accepted its terms",
                hint=f"{LOGIN_HINT}; request access at {self.endpoint}/{repo}",
            ) from None
        except errors.RepositoryNotFoundError:
            raise HubError(
                f"{ref}: repository not found on {self.endpoint} (a private repo needs a token: {LOGIN_HINT})"
            ) from None
        except errors.RevisionNotFoundError:
            raise HubError(f"{ref}: no branch, tag or commit {revision!r} in {repo}{self._branch_hint(repo)}"
                           ) from None
        except errors.LocalEntryNotFoundError as exc:
            # hf_hub_download found neither the Hub nor a cached copy; the cause says which it was.
            cause = exc.__cause__
            if isinstance(cause, http.TimeoutException):
                raise self._unreachable(repo, f"no answer within {self.timeout:g} s") from None
            if isinstance(cause, http.TransportError):
                raise self._unreachable(repo, f"{type(cause).__name__}: {_first_line(cause)}") from None
            raise self._not_cached(repo, revision, self._cache(repo), file=file) from None
        except errors.EntryNotFoundError:
            raise HubError(f"{ref}: the repo lists {file or 'a file'}, but the Hub does not serve it"
                           ) from None
        except errors.OfflineModeIsEnabled:
            raise self._not_cached(repo, revision, self._cache(repo), file=file) from None
        except http.TimeoutException as exc:
            why = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            raise self._unreachable(repo, why) from None
        except http.TransportError as exc:
            raise self._unreachable(repo, f"{type(exc).__name__}: {_first_line(exc)}") from None
        except errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise HubError(f"{ref}: the Hub at {self.endpoint} answered HTTP {status}: {_first_line(exc)}"
                           ) from None
        except (errors.FileMetadataError, OSError) as exc:
            raise HubError(f"{ref}{'/' + file if file else ''}: {type(exc).__name__}: {_first_line(exc)}"
                           ) from None

    def _branch_hint(self, repo: str) -> str:
        try:
            names = sorted((b.name for b in self._branches(repo)), key=_natural)
        except HubError:
            return ""
        return f" (branches: {', '.join(names)})" if names else ""

    def _cached_text(self, repo: str, cache: RepoCache) -> str:
        refs = cache.cached_refs()
        if not refs:
            return f"nothing of {repo} is cached"
        return "cached: " + ", ".join(f"hf:{repo}@{rev} (commit {c[:12]})" for rev, c in refs.items())

    def _not_cached(
        self, repo: str, revision: str | None, cache: RepoCache, *, file: str | None = None
    ) -> HubError:
        what = f"hf:{repo}" + (f"@{revision}" if revision else " (its branch list)")
        if file:
            what += f"/{file}"
        return HubError(f"offline (HF_HUB_OFFLINE=1) and {what} is not in the cache; "
                        f"{self._cached_text(repo, cache)}")

    def _unreachable(self, repo: str, why: str) -> HubError:
        return HubError(
            f"cannot reach the Hub at {self.endpoint}: {why}; {self._cached_text(repo, self._cache(repo))}",
            hint="with HF_HUB_OFFLINE=1 a cached revision plans without the network",
        )

    def _tick(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


def _natural(name: str) -> list[Any]:
    """Sort key that puts 2.5bpw < 4.0bpw < 10.0bpw (numbers compared as numbers)."""
    return [(0, float(part), "") if part[:1].isdigit() else (1, 0.0, part)
            for part in re.findall(r"\d+(?:\.\d+)?|\D+", name)]


def _note(meter: _Meter, name: str, cached_bytes: int) -> None:
    """Record a file read once per meter (a branch reads its config.json twice: to classify, to plan)."""
    if name not in meter.files:
        meter.files.append(name)
        meter.cached += cached_bytes


def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"^\s*bytes\s+(?:\d+-\d+|\*)/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------------------------ entry points


def read_hub_spec(ref: str | HubRef, *, progress: Progress | None = None) -> ModelSpec:
    """The spec of `hf:ORG/REPO[@REVISION]` (default revision: main)."""
    hub_ref = parse_hub_ref(ref) if isinstance(ref, str) else ref
    return HubReader(progress=progress).read(hub_ref.repo, hub_ref.revision)


def read_hub_branches(repo: str, *, progress: Progress | None = None) -> BranchListing:
    return HubReader(progress=progress).read_branches(repo)
