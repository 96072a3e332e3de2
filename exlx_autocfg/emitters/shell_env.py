"""Shell exports for the environment a plan needs before exllamav2 is imported.

exllamav2 disables a backend when EXLLAMA_NO_<BACKEND> is *present* (any value), so a backend the plan
keeps is `unset`, not set to 0: sourcing the output gives the same state whatever the shell had before.
Device pinning (CUDA_DEVICE_ORDER / CUDA_VISIBLE_DEVICES) is added when the plan depends on device order
(see `common.device_pinning`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from exlx_autocfg.emitters.common import header, runtime_env
from exlx_autocfg.emitters.source import EmitInput

SHELLS: tuple[str, ...] = ("sh", "fish", "powershell")


def _fish_quote(value: str) -> str:
    # fish single quotes: only \\ and \' are escapes inside them.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell_quote(value: str) -> str:
    # PowerShell single-quoted strings are literal; a quote is written twice.
    return "'" + value.replace("'", "''") + "'"


def lines(env: Mapping[str, str | None], shell: str) -> list[str]:
    out = []
    for name, value in env.items():
        if shell == "sh":
            out.append(f"export {name}={shlex.quote(value)}" if value is not None else f"unset {name}")
        elif shell == "fish":
            out.append(f"set -gx {name} {_fish_quote(value)}" if value is not None else f"set -e {name}")
        elif shell == "powershell":
            out.append(f"$env:{name} = {_powershell_quote(value)}" if value is not None
                       else f"Remove-Item Env:{name} -ErrorAction SilentlyContinue")
        else:
            raise ValueError(f"unknown shell {shell!r}")
    return out


def render(src: EmitInput, shell: str = "sh") -> str:
    env = runtime_env(src)
    source = {
        "sh": "eval \"$(exlx-autocfg emit --format env ...)\"",
        "fish": "exlx-autocfg emit --format env --shell fish ... | source",
        "powershell": "exlx-autocfg emit --format env --shell powershell ... | Out-String | iex",
    }[shell]
    text = header(src, f"{shell} environment", [f"Use: {source}"])
    return text + "".join(line + "\n" for line in lines(env, shell))
