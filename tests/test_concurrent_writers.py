"""Concurrent writers (issue 14): `emit --out` into one file from several real processes keeps every entry
(read-merge-write runs under a lock), and profile writes into one shared directory stay whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from exlx_autocfg.profile.format import read_profile
from tests.support.concurrency import ROOT, concurrent_textgen_emits
from tests.support.files import user_files


@pytest.mark.slow
@pytest.mark.parametrize("writers", [2, 6])
def test_concurrent_emits_into_one_file_keep_every_entry(tmp_path, writers):
    """`writers` interpreters released at once, each merging 3 models into one config-user.yaml: every
    entry is kept (without the lock, about half the runs lost entries) and the user's own entry too."""
    outcome = concurrent_textgen_emits(tmp_path, writers, per_writer=3)
    assert outcome.exit_codes == [0] * writers
    assert outcome.kept == outcome.expected == writers * 3
    assert outcome.leftovers == []


PROFILE_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from exlx_autocfg.profile.format import profile_from_plan, write_profile
    from tests.support import profile_samples as s
    n, shared = int(sys.argv[1]), sys.argv[2]
    for i in range(30):
        profile = profile_from_plan(s.plan(max_seq_len=256 * (n + 1)), s.facts())
        profile.request = {{"round": i, "writer": n}}
        write_profile(profile, f"{{shared}}/own-{{n}}.toml")  # a file of its own
        write_profile(profile, f"{{shared}}/common.toml")  # and one all of them share
""")


@pytest.mark.slow
def test_profile_writers_sharing_a_directory(tmp_path):
    shared = tmp_path / "profiles"
    script = PROFILE_WRITER.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n), str(shared)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert user_files(shared) == ["common.toml"] + [f"own-{n}.toml" for n in range(4)]
    for n in range(4):
        assert read_profile(shared / f"own-{n}.toml").request == {"round": 29, "writer": n}
    last = read_profile(shared / "common.toml")
    assert last.request["round"] == 29 and last.settings.max_seq_len == 256 * (last.request["writer"] + 1)
