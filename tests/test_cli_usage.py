"""The CLI shell: usage errors exit 2 with click's message, commands load lazily, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exlx_autocfg import cli


@pytest.mark.parametrize(
    "argv",
    [["plan", "--no-such-option"], ["detect", "extra-argument"], ["no-such-command"], ["emit"]],
)
def test_usage_errors_exit_2_with_one_message(argv, capsys):
    assert cli.run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("exlx-autocfg: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_every_command(capsys):
    assert cli.run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in cli.COMMAND_MODULES:
        assert command in out


def test_running_detect_does_not_import_the_planner():
    code = (
        "import sys; from exlx_autocfg import cli; cli.run(['detect', '--no-import', '--json']);"
        "print('\\nPLANNER', 'exlx_autocfg.planner.core' in sys.modules, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PLANNER False" in proc.stderr
