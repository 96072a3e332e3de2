"""Read the header of a .safetensors file, never its tensor data.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian unsigned header length N, then
N bytes of UTF-8 JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`,
then the data buffer; offsets are relative to the start of the buffer. A sparse or 100 GB file costs the
same as a small one: we read 8 + N bytes and stat the size.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from exlx_autocfg.atomic import open_regular
from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.layout import DTYPE_BYTES

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference reader refuses headers over 100 MB
_MAX_DIM = 2**62  # a shape entry above this (or a product above it) is not a tensor that can exist


@dataclass(frozen=True)
class TensorHeader:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class SafetensorsHeader:
    path: Path
    header_bytes: bytes  # the raw 8-byte length + JSON, hashed into the model fingerprint
    tensors: dict[str, TensorHeader]
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0


def _fail(path: Path, problem: str) -> ModelSpecError:
    return ModelSpecError(f"{path}: {problem}")


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of `path`; raise ModelSpecError (file + problem, one line) otherwise,
    SpecialFileError when `path` is not a regular file."""
    path = Path(path)
    try:
        with open_regular(path) as fh:  # a FIFO or device named *.safetensors is refused, never read
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            length = header_length(path, prefix, size)
            raw = fh.read(length)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_header_bytes(path, prefix + raw, size)


def header_length(path: Path, prefix: bytes, file_size: int, limit: int = MAX_HEADER_BYTES) -> int:
    """The header length the first 8 bytes announce, checked against the file size and `limit`."""
    if len(prefix) < 8:
        raise _fail(path, f"truncated safetensors file ({file_size} bytes, no header length)")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > limit:
        raise _fail(path, f"safetensors header length {length} is absurd (limit {limit})")
    if 8 + length > file_size:
        raise _fail(path, f"truncated safetensors header ({length} bytes announced, {file_size - 8} present)")
    return length


def parse_header_bytes(path: Path, header_bytes: bytes, file_size: int) -> SafetensorsHeader:
    """Parse the 8-byte length + JSON header of a file of `file_size` bytes, wherever the bytes came from
    (a local file, or HTTP range requests on the Hub): the same checks, the same errors."""
    length = header_length(path, header_bytes[:8], file_size)
    raw = header_bytes[8:]
    if len(raw) < length:
        raise _fail(path, "truncated safetensors header")
    raw = raw[:length]
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"safetensors header is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise _fail(path, "safetensors header is not a JSON object")
    tensors, metadata = _parse_entries(path, doc, data_size=file_size - 8 - length)
    return SafetensorsHeader(path, header_bytes[:8] + raw, tensors, metadata, file_size)


def _parse_entries(
    path: Path, doc: dict, *, data_size: int
) -> tuple[dict[str, TensorHeader], dict[str, str]]:
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorHeader] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise _fail(path, "__metadata__ is not an object")
            metadata = {str(k): str(v) for k, v in entry.items()}
            continue
        tensors[name] = _parse_tensor(path, name, entry, data_size)
    _check_overlaps(path, tensors)
    return tensors, metadata


def _parse_tensor(path: Path, name: str, entry: object, data_size: int) -> TensorHeader:
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor {name!r}: entry is not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of integers")
    if any(d < 0 for d in shape):
        raise _fail(path, f"tensor {name!r}: negative dimension in shape {shape}")
    if any(d > _MAX_DIM for d in shape) or math.prod(shape) * DTYPE_BYTES[dtype] > _MAX_DIM:
        raise _fail(path, f"tensor {name!r}: shape {shape} overflows")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise _fail(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise _fail(path, f"tensor {name!r}: data_offsets {offsets} are inconsistent")
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != nbytes:
        raise _fail(
            path, f"tensor {name!r}: data_offsets span {end - begin} bytes, {dtype}{shape} needs {nbytes}"
        )
    if end > data_size:
        raise _fail(
            path, f"tensor {name!r} ends at byte {end} of a {data_size}-byte data buffer (file truncated?)"
        )
    return TensorHeader(name, dtype, tuple(shape), begin, end)


def _check_overlaps(path: Path, tensors: dict[str, TensorHeader]) -> None:
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise _fail(path, f"tensors {name_a!r} and {name_b!r} overlap in the data buffer")


def write_header_only(
    path: str | os.PathLike[str],
    tensors: list[tuple[str, str, tuple[int, ...]]],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a valid safetensors file whose data region is a hole (sparse): header, then truncate to size.

    Used to build test and demo model directories of full-size models at no disk cost. Returns the size.
    """
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = DTYPE_BYTES[dtype] * math.prod(shape)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8-byte alignment
    size = 8 + len(raw) + offset
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(size)
    return size
