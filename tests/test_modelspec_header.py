"""The safetensors header reader: valid headers parse, anything else is one ModelSpecError naming the file."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.safetensors import MAX_HEADER_BYTES, read_header, write_header_only

VALID = [
    ("a.weight", "F16", (4, 8)),
    ("a.q_weight", "I32", (2, 32)),
    ("a.q_groups", "I16", (6,)),
    ("b.bias", "BF16", (8,)),
    ("scalar", "F32", ()),
    ("empty", "U8", (0, 3)),
]


def _write(path: Path, header: dict | bytes, data_size: int, *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw) if length is None else length))
        fh.write(raw)
        fh.write(b"\0" * data_size)
    return path


def _valid_header() -> tuple[dict, int]:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    sizes = {"F16": 2, "I32": 4, "I16": 2, "BF16": 2, "F32": 4, "U8": 1}
    for name, dtype, shape in VALID:
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    return header, offset


def test_reads_names_dtypes_shapes_and_bytes(tmp_path):
    header, size = _valid_header()
    parsed = read_header(_write(tmp_path / "m.safetensors", header, size))
    assert parsed.metadata == {"format": "pt"}
    assert {n: (t.dtype, t.shape) for n, t in parsed.tensors.items()} == {n: (d, s) for n, d, s in VALID}
    assert parsed.tensors["a.weight"].nbytes == 64
    assert parsed.tensors["scalar"].nbytes == 4 and parsed.tensors["empty"].nbytes == 0


def test_sparse_file_costs_nothing_and_reads_back(tmp_path):
    tensors = [("big.weight", "F16", (128256, 8192)), ("x.q_weight", "I32", (16384, 28672))]
    path = tmp_path / "huge.safetensors"
    size = write_header_only(path, tensors)
    assert size > 3 * 1024**3 and path.stat().st_size == size
    assert path.stat().st_blocks * 512 < 1024 * 1024  # a hole, not 3 GiB of zeros
    parsed = read_header(path)
    assert parsed.tensors["big.weight"].nbytes == 128256 * 8192 * 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p, h, n: p.write_bytes(b"\x10\x00"), "truncated safetensors file"),
        (lambda p, h, n: _write(p, h, n, length=MAX_HEADER_BYTES + 1), "absurd"),
        (lambda p, h, n: _write(p, h, n, length=10**6), "truncated safetensors header"),
        (lambda p, h, n: _write(p, b"{not json" + b" " * 7, n), "not JSON"),
        (lambda p, h, n: _write(p, b"[1, 2, 3]", n), "not a JSON object"),
        (lambda p, h, n: _write(p, h, n - 1), "data buffer (file truncated?)"),
        (
            lambda p, h, n: _write(p, {**h, "a.weight": {**h["a.weight"], "dtype": "Q4_K"}}, n),
            "unknown dtype",
        ),
        (lambda p, h, n: _write(p, {**h, "a.weight": {**h["a.weight"], "shape": [-4, -8]}}, n), "negative"),
        (
            lambda p, h, n: _write(p, {**h, "a.weight": {**h["a.weight"], "shape": [2**40, 2**40]}}, n),
            "overflows",
        ),
        (lambda p, h, n: _write(p, {**h, "a.weight": {**h["a.weight"], "shape": [4, 9]}}, n), "needs"),
        (lambda p, h, n: _write(p, {**h, "b.bias": {**h["b.bias"], "data_offsets": [0, 16]}}, n), "overlap"),
        (
            lambda p, h, n: _write(p, {**h, "a.weight": {**h["a.weight"], "data_offsets": [8, 4]}}, n),
            "inconsistent",
        ),
        (lambda p, h, n: _write(p, {**h, "a.weight": "x"}, n), "not an object"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, mutate, message):
    header, size = _valid_header()
    path = tmp_path / "bad.safetensors"
    mutate(path, header, size)
    with pytest.raises(ModelSpecError) as err:
        read_header(path)
    line = err.value.one_line()
    assert message in line and str(path) in line and "\n" not in line


def test_missing_file(tmp_path):
    with pytest.raises(ModelSpecError, match="cannot read"):
        read_header(tmp_path / "nope.safetensors")


_SCRATCH = Path(tempfile.mkdtemp(prefix="exlx-st-"))


def _check_total(path: Path) -> None:
    try:
        parsed = read_header(path)
    except ModelSpecError as exc:
        assert str(path) in exc.one_line() and "\n" not in exc.one_line()
        return
    data = os.path.getsize(path) - len(parsed.header_bytes)
    for t in parsed.tensors.values():  # whatever parses is self-consistent
        assert 0 <= t.begin <= t.end <= data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(blob):
    path = _SCRATCH / "random.safetensors"
    path.write_bytes(blob)
    _check_total(path)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    target=st.sampled_from([name for name, _, _ in VALID]),
    field=st.sampled_from(["dtype", "shape", "data_offsets", None]),
    value=json_values,
    cut=st.integers(min_value=0, max_value=400),
)
def test_mutated_headers_parse_or_fail_cleanly(target, field, value, cut):
    header, size = _valid_header()
    if field is None:
        header[target] = value
    else:
        header[target] = {**header[target], field: value}
    path = _write(_SCRATCH / "mutated.safetensors", header, size)
    _check_total(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: max(0, len(blob) - cut)])  # and the same file truncated anywhere
    _check_total(path)
