"""The typer application object; command modules register themselves on it."""

from __future__ import annotations

from typing import Annotated

import typer

from exlx_autocfg.cli import coercion

coercion.install()  # plain option values without importing pydantic (typer >= 0.29)

app = typer.Typer(
    name="exlx-autocfg",
    help="Probe GPUs and the GPU stack, plan the best ExLlamaV2 settings, write and apply profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # -h on every command too
)


def _print_version(value: bool) -> None:
    if value:
        from exlx_autocfg import __version__

        typer.echo(f"exlx-autocfg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Print the version and exit.", is_eager=True,
                     callback=_print_version),
    ] = False,
) -> None:
    """Probe GPUs and the GPU stack, plan the best ExLlamaV2 settings, write and apply profiles."""
    # A callback keeps `app` a group even when only one command module is loaded (see cli.run).
