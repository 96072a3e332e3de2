"""The typer application object; command modules register themselves on it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="exlx-autocfg",
    help="Probe GPUs and the GPU stack, plan the best ExLlamaV2 settings, write and apply profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Probe GPUs and the GPU stack, plan the best ExLlamaV2 settings, write and apply profiles."""
    # A callback keeps `app` a group even when only one command module is loaded (see cli.run).
