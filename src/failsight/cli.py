"""Command-line interface (typer). Thin: every command calls library functions and the report."""

from __future__ import annotations

import typer

from failsight import __version__

app = typer.Typer(
    name="failsight",
    help="Find where, why and how a classifier fails - and fix what can be fixed.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"failsight {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """failsight: reliability, robustness and debugging beyond the test set."""
