"""The profile file: round trips, strict validation of hand edits, atomic writes, concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.errors import ProfileError
from exlx_autocfg.exl2 import BACKENDS, CACHE_MODES
from exlx_autocfg.profile.format import (
    PROFILE_SCHEMA,
    default_profile_path,
    machine_identity,
    parse_profile,
    profile_from_plan,
    read_profile,
    render_profile,
    write_profile,
)
from tests.support import profile_samples as samples
from tests.support.files import tmp_leftovers

ROOT = Path(__file__).resolve().parent.parent


def sample_profile(**plan_kw):
    return profile_from_plan(samples.plan(**plan_kw), samples.facts(), created="2026-11-29T00:00:00Z")


def test_round_trip_keeps_every_field():
    profile = sample_profile(gpu_split=None, autosplit=True, reserve_bytes=[256 * 1024**2])
    text = render_profile(profile)
    assert parse_profile(text) == profile
    assert text.startswith("# exlx-autocfg profile: ExLlamaV2 settings for Llama-3.1-8B-exl2 on NVIDIA")
    assert f"schema = {PROFILE_SCHEMA}" in text
    # What it was computed for: GPU identity and VRAM, libraries with build tags, interpreter, model.
    cf = parse_profile(text).computed_for
    assert cf.gpus[0].uuid == "GPU-5b0c7c3e-1f2a-4d6b-9e8f-2080ee220001"
    assert cf.gpus[0].memory_total == 22528 * 1024**2
    assert cf.libraries["torch"].local_tag == "cu121"
    assert cf.libraries["xformers"].import_paths["xformers.ops.fmha.LowerTriangularFromBottomRightMask"]
    assert cf.model.fingerprint == "ab" * 32
    assert cf.python == "/opt/tabby/venv/bin/python"
    reason = parse_profile(text).reasons[0]
    assert reason.code == "backend.highest_valid"
    assert [(f.code, f.message) for f in reason.rejected["flash_attn"]] == [
        ("backend.flash_attn.compute_capability", "compute capability 7.5 < 8.0")
    ]


@settings(max_examples=60, deadline=None)
@given(
    backend=st.sampled_from(BACKENDS),
    cache_mode=st.sampled_from(CACHE_MODES),
    pages=st.integers(1, 512),
    chunk=st.integers(1, 64).map(lambda n: n * 256),
    batch=st.integers(1, 64),
    split=st.one_of(st.none(), st.lists(st.floats(0, 200, allow_nan=False), min_size=1, max_size=4)),
    reserve=st.lists(st.integers(0, 2**34), max_size=4),
)
def test_any_valid_plan_round_trips(backend, cache_mode, pages, chunk, batch, split, reserve):
    profile = sample_profile(backend=backend, cache_mode=cache_mode, max_seq_len=pages * 256,
                             max_input_len=chunk, max_batch_size=batch, paged=backend == "flash_attn",
                             gpu_split=split,
                             autosplit=split is None, reserve_bytes=reserve)
    assert parse_profile(render_profile(profile)) == profile


SAMPLE_TEXT = render_profile(sample_profile())

# One hand edit each: (old line, new line, the key the error must name, a word it must contain).
BAD_EDITS = [
    ('cache_mode = "Q6"', 'cache_mode = "Q5"', "settings.cache_mode", "FP16"),
    ('cache_mode = "Q6"', 'cache_mod = "Q6"', "settings.cache_mod", "did you mean settings.cache_mode"),
    ("max_seq_len = 16384", "max_seq_len = -4096", "settings.max_seq_len", "positive"),
    ("max_seq_len = 16384", "max_seq_len = 16000", "settings.max_seq_len", "multiple of 256"),
    ("max_seq_len = 16384", 'max_seq_len = "16384"', "settings.max_seq_len", "integer"),
    ("max_input_len = 2048", "max_input_len = 0", "settings.max_input_len", "positive"),
    ("max_batch_size = 1", "max_batch_size = 1.5", "settings.max_batch_size", "integer"),
    ('backend = "sdpa"', 'backend = "flash"', "settings.backend", "flash_attn"),
    ("no_sdpa = false", "no_sdpa = true", "settings.no_sdpa", "turns off"),
    ("no_xformers = true", "no_xformers = false", "settings.no_xformers", "prefers xformers"),
    ("paged = false", "paged = true", "settings.paged", "flash_attn"),
    ("paged = false", 'paged = "no"', "settings.paged", "bool"),
    ("autosplit = false", "autosplit = false\ngpu_split = [-1.0]", "settings.gpu_split[0]", ">= 0"),
    ("autosplit = false", "autosplit = false\ngpu_split = [nan]", "settings.gpu_split[0]", "finite"),
    ("autosplit = false", "autosplit = true\ngpu_split = [10.0]", "settings.gpu_split", "autosplit"),
    ("reserve_bytes = []", "reserve_bytes = [-5]", "settings.reserve_bytes[0]", "negative"),
    ("\n[settings]\n", "\n[settings]\ncolour = 3\n", "settings.colour", "unknown key"),
    ("\n[settings]\n", "\n[setting]\n", "setting", "did you mean settings"),
    ("memory_total = 23622320128", "memory_total = -1", "computed_for.gpus[0].memory_total", "negative"),
    ('name = "NVIDIA GeForce RTX 2080 Ti"\n', "", "computed_for.gpus[0].name", "missing"),
    ("schema = 2", "schema = 9", "schema", "not supported"),
    ("max_seq_len = 16384", "max_seq_len = ", "", "not valid TOML"),
]


@pytest.mark.parametrize(("old", "new", "key", "word"), BAD_EDITS, ids=[e[2] or "toml" for e in BAD_EDITS])
def test_hand_edit_errors_name_the_key(old, new, key, word):
    text = render_profile(sample_profile())
    assert old in text
    with pytest.raises(ProfileError) as info:
        parse_profile(text.replace(old, new, 1), "my.toml")
    line = info.value.one_line()
    assert "\n" not in line
    assert line.startswith(f"profile my.toml: {key}") and word in line, line


@settings(max_examples=25, deadline=None)
@given(key=st.sampled_from(["max_seq_len", "max_input_len", "max_attention_size", "max_batch_size"]),
       value=st.one_of(st.integers(max_value=0), st.text(max_size=5), st.booleans(),
                       st.floats(allow_nan=False)))
def test_any_bad_length_is_refused_naming_its_key(key, value):
    import tomli_w

    text = SAMPLE_TEXT
    current = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
    bad = tomli_w.dumps({key: value}).strip()
    with pytest.raises(ProfileError, match=rf"settings\.{key}: "):
        parse_profile(text.replace(current, bad, 1))


def test_read_missing_and_unreadable(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        read_profile(tmp_path / "nope.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProfileError, match="cannot read"):
        read_profile(tmp_path / "binary.toml")


def test_default_location_is_one_file_per_model_and_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    f1 = samples.facts()
    f2 = samples.facts(gpus=[samples.gpu_p40()])
    a = default_profile_path("Llama 3.1/8B", "ab" * 32, machine_identity(f1))
    b = default_profile_path("Llama 3.1/8B", "ab" * 32, machine_identity(f2))
    c = default_profile_path("Llama 3.1/8B", "cd" * 32, machine_identity(f1))
    assert len({a, b, c}) == 3
    assert a.parent == tmp_path / "exlx-autocfg" / "profiles"
    assert a.name == f"Llama-3.1-8B-abababababab-{machine_identity(f1)}.toml"
    assert machine_identity(f1) == machine_identity(samples.facts())  # stable


# --- atomic writes ------------------------------------------------------------------------------------


def test_write_replaces_only_with_a_complete_profile(tmp_path, monkeypatch):
    path = tmp_path / "p.toml"
    write_profile(sample_profile(max_seq_len=8192), path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ProfileError, match=r"cannot write profile .*No space left on device"):
        write_profile(sample_profile(max_seq_len=4096), path)
    assert path.read_bytes() == before
    assert tmp_leftovers(tmp_path) == []


def test_invalid_profile_is_never_written(tmp_path):
    path = tmp_path / "p.toml"
    write_profile(sample_profile(), path)
    before = path.read_bytes()
    bad = sample_profile()
    bad.settings.max_seq_len = -1
    with pytest.raises(ProfileError, match=r"settings\.max_seq_len"):
        write_profile(bad, path)
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []


def test_unwritable_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ProfileError, match=r"cannot write profile .*file/sub/p\.toml"):
        write_profile(sample_profile(), blocker / "sub" / "p.toml")


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    """A crash between writing the temp file and the rename (KeyboardInterrupt here) leaves the old file."""
    path = tmp_path / "p.toml"
    write_profile(sample_profile(max_seq_len=8192), path)
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_profile(sample_profile(max_seq_len=4096), path)
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from exlx_autocfg.findings import Finding
    from exlx_autocfg.profile.format import profile_from_plan, write_profile
    from tests.support import profile_samples as s
    n = int(sys.argv[1])
    # Each writer's profiles differ in size as well as content, so a torn write could not pass for whole.
    warnings = [Finding("plan.what_if", "w" * 50)] * n
    profile = profile_from_plan(s.plan(max_seq_len=256 * (n + 1), warnings=warnings), s.facts())
    for i in range(100):
        profile.request = {{"round": i, "writer": n}}
        write_profile(profile, sys.argv[2])
""")


def test_concurrent_writers_never_expose_a_partial_profile(tmp_path):
    path = tmp_path / "shared.toml"
    write_profile(sample_profile(), path)
    script = WRITER.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n), str(path)]) for n in range(8)]
    reads, seen = 0, set()
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        profile = read_profile(path)  # must always parse and validate: old or new, never half
        seen.add(profile.settings.max_seq_len)
        reads += 1
    assert [p.wait(timeout=30) for p in procs] == [0] * 8
    final = read_profile(path)
    assert final.request["round"] == 99
    assert final.settings.max_seq_len == 256 * (final.request["writer"] + 1)
    assert reads > 20 and len(seen) > 1
    assert tmp_leftovers(tmp_path) == []


def test_replacing_keeps_the_file_mode(tmp_path):
    path = tmp_path / "p.toml"
    write_profile(sample_profile(), path)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    write_profile(sample_profile(max_seq_len=4096), path)
    assert path.stat().st_mode & 0o777 == 0o600


MANGLED_VALUES = ["-1", "0", "1.5", '"x"', "true", "[]", "{}", "[1, -2]", '"Q7"']


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_mangled_profile_parses_or_fails_with_one_line(data):
    """Deleting lines or replacing values anywhere never escapes as anything but a one-line ProfileError."""
    lines = SAMPLE_TEXT.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        if data.draw(st.booleans()) or " = " not in lines[i]:
            del lines[i]
        else:
            key = lines[i].split(" = ", 1)[0]
            value = data.draw(st.sampled_from(MANGLED_VALUES))
            lines[i] = f"{key} = {value}"
    try:
        parse_profile("\n".join(lines), "m.toml")
    except ProfileError as exc:
        assert "\n" not in exc.one_line() and exc.one_line().startswith("profile m.toml: ")
