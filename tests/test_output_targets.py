"""The output-target policy (exlx_autocfg/atomic.py) and `emit --out` under failure (issue 14).

A symlink is written through (atomically, beside its target; the link stays a link), the null device and
this process's stdout are written plainly, other devices, FIFOs and sockets are refused unopened, the
`.bak` is made only of regular files, and a write that fails part-way (full disk, a crash before the
rename, an unwritable backup) leaves the old file as it was and no temporary file behind. A merged YAML
keeps the UTF-8 BOM and CRLF line endings it had.
"""

from __future__ import annotations

import os
import re
import stat

import pytest
import yaml

from exlx_autocfg import atomic
from exlx_autocfg.cli import run
from exlx_autocfg.emitters import emit
from exlx_autocfg.emitters.output import merge_block
from exlx_autocfg.emitters.yaml_merge import merge_yaml
from exlx_autocfg.errors import OutputError, SpecialFileError
from exlx_autocfg.profile.format import profile_from_plan, write_profile
from tests.support.emit_samples import turing_plan
from tests.support.files import tmp_leftovers, user_files
from tests.support.profile_samples import facts, gpu_2080ti

NULL = os.makedev(1, 3)


@pytest.fixture()
def profile(tmp_path):
    return write_profile(profile_from_plan(turing_plan(), facts(gpus=[gpu_2080ti()])), tmp_path / "p.toml")


pytestmark = pytest.mark.usefixtures("no_hang")


# ------------------------------------------------------------------------------------------ the policy


def test_symlink_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real" / "config.yml"
    real.parent.mkdir()
    real.write_text("model:\n  a: 1\n")
    real.chmod(0o640)
    link = tmp_path / "config.yml"
    link.symlink_to(real)
    with atomic.updating(link) as out:
        assert out.old_text() == "model:\n  a: 1\n"
        written = out.write("model:\n  a: 2\n", backup=True)
    assert written == real and link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "model:\n  a: 2\n" and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert (tmp_path / "real" / "config.yml.bak").read_text() == "model:\n  a: 1\n"  # beside the target
    assert user_files(tmp_path) == ["config.yml", "real"]
    assert tmp_leftovers(real.parent) == []


def test_dangling_symlink_creates_its_target(tmp_path):
    (tmp_path / "link.yml").symlink_to("made.yml")
    atomic.write_text_atomic(tmp_path / "link.yml", "x: 1\n")
    assert (tmp_path / "link.yml").is_symlink() and (tmp_path / "made.yml").read_text() == "x: 1\n"


def test_null_device_is_written_plainly(tmp_path):
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, NULL)
    target = atomic.output_target(node)
    assert target.kind == "stream"
    with atomic.updating(node) as out:
        assert out.old is None  # a device is never read
        out.write("discarded\n", backup=True)
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.lstat(node).st_rdev == NULL
    assert user_files(tmp_path) == ["null"]  # no .bak, no temporary file, no lock


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_stdout_names_write_to_this_process_stdout(name, capsys):
    target = atomic.output_target(name)
    assert (target.kind, target.stream_fd) == ("stream", 1)
    atomic.write_text_atomic(name, "to stdout\n")
    assert capsys.readouterr().out == "to stdout\n"


@pytest.mark.parametrize("name", ["/dev/stdin", "/dev/fd/7", f"/proc/{os.getpid()}/fd/0"])
def test_other_descriptors_are_refused(name):
    with pytest.raises(OutputError, match="names file descriptor"):
        atomic.output_target(name)


def test_fifo_device_and_socket_are_refused_without_opening(tmp_path):
    import socket

    os.mkfifo(tmp_path / "fifo")  # no reader: opening it for writing would block
    os.mknod(tmp_path / "dev", stat.S_IFCHR | 0o600, os.makedev(240, 0))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
    for name, kind in (("fifo", "a FIFO (named pipe)"), ("dev", "a character device"), ("sock", "a socket")):
        with pytest.raises(OutputError, match=re.escape(f"is {kind}; refusing to write to it")):
            atomic.write_text_atomic(tmp_path / name, "x")
        with pytest.raises(SpecialFileError, match=re.escape(f"is {kind}, not a regular file")):
            atomic.read_regular(tmp_path / name)
    assert user_files(tmp_path) == ["dev", "fifo", "sock"]


def test_open_regular_checks_the_opened_file_too(tmp_path, monkeypatch):
    """A regular file swapped for a FIFO between the stat and the open: the non-blocking open returns at
    once and the second check refuses it."""
    path = tmp_path / "config.json"
    path.write_text("{}")
    real_open = os.open

    def swap_then_open(p, flags, *args):
        if str(p) == str(path):
            path.unlink()
            os.mkfifo(path)
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(SpecialFileError, match="is a FIFO"):
        atomic.read_regular(path)


# --------------------------------------------------------------------------------- emit --out failures


def test_emit_out_full_disk_keeps_the_old_file(profile, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.yml"
    config.write_text("# mine\nmodel:\n  vision: true\n")
    before = config.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert run(["emit", "-f", "tabbyapi", str(profile), "--out", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == f"exlx-autocfg: error: cannot write {config}: No space left on device\n"
    assert config.read_bytes() == before and tmp_leftovers(tmp_path) == []
    assert not (tmp_path / "config.yml.bak").exists()  # the backup failed first: nothing was replaced


def test_emit_out_interrupted_before_the_rename_keeps_the_old_file(profile, tmp_path, monkeypatch):
    config = tmp_path / "config-user.yaml"
    config.write_text("default:\n  a: 1\n")
    before = config.read_bytes()
    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst) == str(config):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    assert run(["emit", "-f", "textgen", str(profile), "--out", str(config)]) == 130
    assert config.read_bytes() == before and tmp_leftovers(tmp_path) == []
    assert (tmp_path / "config-user.yaml.bak").read_bytes() == before  # the backup is the old file


def test_emit_out_unwritable_backup_leaves_the_target_alone(profile, tmp_path, monkeypatch):
    config = tmp_path / "exlx-env.sh"
    config.write_text("export MINE=1\n")
    before = config.read_bytes()
    real_replace = os.replace

    def refuse_bak(src, dst):
        if str(dst).endswith(".bak"):
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_bak)
    assert run(["emit", "-f", "env", str(profile), "--out", str(config)]) == 2
    assert config.read_bytes() == before and tmp_leftovers(tmp_path) == []


def test_emit_out_rechecks_the_target_under_the_lock(profile, tmp_path, monkeypatch, capsys):
    """The target turns into a FIFO after the early check: the write refuses it, it does not block."""
    target = tmp_path / "config-user.yaml"
    real = atomic.directory_lock

    def lock_then_swap(directory, timeout=atomic.LOCK_TIMEOUT_S):
        if not target.exists():
            os.mkfifo(target)
        return real(directory, timeout)

    monkeypatch.setattr(atomic, "directory_lock", lock_then_swap)
    assert run(["emit", "-f", "textgen", str(profile), "--out", str(target)]) == 2
    assert "is a FIFO" in capsys.readouterr().err and stat.S_ISFIFO(os.lstat(target).st_mode)


def test_lock_timeout_is_one_line(tmp_path, monkeypatch):
    import filelock

    other = filelock.FileLock(str(tmp_path / atomic.LOCK_NAME))
    other.acquire()
    try:
        import threading

        errors = []

        def write():  # another thread: the lock objects are per thread, like another process's
            try:
                with atomic.updating(tmp_path / "x.yml", lock_timeout=0.2) as out:
                    out.write("x")
            except OutputError as exc:
                errors.append(exc)

        t = threading.Thread(target=write)
        t.start()
        t.join(10)
    finally:
        other.release()
    assert len(errors) == 1 and errors[0].code == "error.output.locked"
    assert "another process has held .exlx-autocfg.lock for 0.2s" in errors[0].one_line()
    assert not (tmp_path / "x.yml").exists()


# ------------------------------------------------------------------------------------ BOM and CRLF kept


def test_merged_yaml_keeps_bom_and_crlf(profile, tmp_path):
    config = tmp_path / "config.yml"
    original = "\ufeff# mine\r\nnetwork:\r\n  port: 5001 # keep\r\nmodel:\r\n  prompt_template: chatml\r\n"
    config.write_bytes(original.encode("utf-8"))
    assert run(["emit", "-f", "tabbyapi", str(profile), "--out", str(config)]) == 0
    raw = config.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM, once
    assert raw.count(b"\xef\xbb\xbf") == 1
    assert raw.count(b"\n") == raw.count(b"\r\n") > 10  # every line ends in CRLF
    doc = yaml.safe_load(raw.decode("utf-8-sig"))
    assert doc["network"] == {"port": 5001} and doc["model"]["prompt_template"] == "chatml"
    assert doc["model"]["cache_mode"] == "Q6"
    assert (tmp_path / "config.yml.bak").read_bytes() == original.encode("utf-8")


def test_lf_file_stays_lf_and_has_no_bom():
    e = emit(turing_plan(), "tabbyapi")
    merged = merge_yaml("network:\n  port: 1\n", e.merge_section, e.merge_values, e.header)
    assert "\r" not in merged and not merged.startswith("\ufeff")


def test_block_merge_keeps_crlf():
    merged = merge_block("export MINE=1\r\n", "export EXLLAMA_NO_SDPA=1\n")
    assert merged.count("\n") == merged.count("\r\n") == 5 and merged.endswith("export MINE=1\r\n")
