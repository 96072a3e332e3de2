"""Real concurrent `exlx-autocfg emit --out` writers into one file, for the lock tests and the bench.

`concurrent_textgen_emits(workdir, writers, per_writer)` writes `writers * per_writer` profiles, each for
another model, starts `writers` real interpreters that wait on a start file, releases them at once, and
lets each run `exlx-autocfg emit -f textgen PROFILE --out config-user.yaml` (the CLI's own `run`) for its
`per_writer` models in turn. It returns how many entries the file should hold, how many it holds and the
writers' exit codes: read-merge-write without a lock loses entries whenever two writers read the same old
file; with the lock every entry is kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from exlx_autocfg.emitters.textgen import entry_key
from exlx_autocfg.profile.format import profile_from_plan, write_profile
from tests.support.emit_samples import model, turing_plan
from tests.support.files import tmp_leftovers
from tests.support.profile_samples import facts, gpu_2080ti

ROOT = Path(__file__).resolve().parent.parent.parent

WRITER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from exlx_autocfg.cli import run
ready, go, target, profiles = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.001)
sys.exit(max(run(["emit", "-f", "textgen", p, "--out", target]) for p in profiles))
"""


@dataclass
class Outcome:
    expected: int  # entries the writers said they wrote
    kept: int  # entries the file holds afterwards
    exit_codes: list[int]
    leftovers: list[str]  # temporary files left beside the target


def concurrent_textgen_emits(workdir: Path, writers: int, per_writer: int, *,
                             code_root: Path = ROOT, timeout: float = 120.0) -> Outcome:
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "config-user.yaml"
    target.write_text("# my settings\ndefault:\n  truncation_length: 2048\n")
    names, argv = [], []
    for w in range(writers):
        profiles = []
        for k in range(per_writer):
            name = f"Model-w{w}-k{k}-exl2"
            plan = turing_plan(model=model(f"/srv/models/{name}"), max_seq_len=256 * (1 + w * per_writer + k))
            path = workdir / "profiles" / f"{name}.toml"
            write_profile(profile_from_plan(plan, facts(gpus=[gpu_2080ti()])), path)
            profiles.append(str(path))
            names.append(name)
        argv.append(profiles)
    go = workdir / "go"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(code_root), str(workdir / f"ready-{w}"),
                               str(go), str(target), *profiles],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
             for w, profiles in enumerate(argv)]
    deadline = time.monotonic() + timeout
    while not all((workdir / f"ready-{w}").exists() for w in range(writers)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.005)
    go.touch()
    codes = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode:
            sys.stderr.write(err.decode(errors="replace"))
        codes.append(p.returncode)
    doc = yaml.safe_load(target.read_text()) or {}
    kept = sum(1 for name in names if entry_key(name) in doc)
    assert doc.get("default") == {"truncation_length": 2048}, "a writer lost the user's own entry"
    return Outcome(expected=len(names), kept=kept, exit_codes=codes, leftovers=tmp_leftovers(workdir))
