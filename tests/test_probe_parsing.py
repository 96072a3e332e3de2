"""Pure parts of the probe: local build tags and the "first useful line" of an error."""

from __future__ import annotations

import pytest
from exlx_autocfg.probe.exlx_probe_common import first_useful_line, parse_local_tag
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("version", "tag", "build"),
    [
        ("2.3.0+cu121", "cu121", {"cuda": "12.1"}),
        ("2.1.2+cu118", "cu118", {"cuda": "11.8"}),
        ("2.9.0+cu130", "cu130", {"cuda": "13.0"}),
        ("2.4.1+rocm6.1", "rocm6.1", {"rocm": "6.1"}),
        ("0.0.29.post3+rocm6.2.4", "rocm6.2.4", {"rocm": "6.2.4"}),
        ("0.3.2+cu128.torch2.9.0", "cu128.torch2.9.0", {"cuda": "12.8", "torch": "2.9.0"}),
        ("0.3.2+rocm6.4.torch2.8.0", "rocm6.4.torch2.8.0", {"rocm": "6.4", "torch": "2.8.0"}),
        ("2.8.3+cu12torch2.9cxx11abiTRUE", "cu12torch2.9cxx11abiTRUE",
         {"cuda": "12", "torch": "2.9", "cxx11_abi": "true"}),
        ("2.13.0+cpu", "cpu", {"device": "cpu"}),
        ("1.4.0+cu92", "cu92", {"cuda": "9.2"}),
        ("2.5.8+cu12torch2.4cxx11abiFALSE", "cu12torch2.4cxx11abiFALSE",
         {"cuda": "12", "torch": "2.4", "cxx11_abi": "false"}),
        ("2.5.1", None, {}),
        ("", None, {}),
    ],
)
def test_local_tags(version: str, tag: str | None, build: dict[str, str]) -> None:
    assert parse_local_tag(version) == (tag, build)


TORCH_VERSIONS = st.from_regex(r"2\.[0-9]{1,2}\.[0-9]", fullmatch=True)


@given(major=st.integers(5, 13), minor=st.integers(0, 9), torch=TORCH_VERSIONS)
def test_cuda_tag_round_trip(major: int, minor: int, torch: str) -> None:
    tag, build = parse_local_tag(f"0.3.2+cu{major}{minor}.torch{torch}")
    assert build == {"cuda": f"{major}.{minor}", "torch": torch}
    assert tag == f"cu{major}{minor}.torch{torch}"


def test_first_useful_line_skips_warnings_and_takes_the_exception() -> None:
    text = (
        "/x/swiglu_op.py:106: FutureWarning: `torch.cuda.amp.custom_fwd(args...)` is deprecated.\n"
        "  @torch.cuda.amp.custom_fwd\n"
        "Traceback (most recent call last):\n"
        '  File "<string>", line 1, in <module>\n'
        "ImportError: /site/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi\n"
    )
    assert first_useful_line(text) == (
        "ImportError: /site/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"
    )


def test_first_useful_line_prefers_a_fatal_error() -> None:
    text = "UserWarning: noise\nFatal Python error: Segmentation fault\n\nCurrent thread 0x1:\n"
    assert first_useful_line(text) == "Fatal Python error: Segmentation fault"


def test_first_useful_line_of_noise_only_output() -> None:
    assert first_useful_line("UserWarning: a\n  warnings.warn(x)\nreal message\n") == "real message"
    assert first_useful_line("") is None
