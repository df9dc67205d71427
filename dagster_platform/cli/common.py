"""What every command group shares: the error exit and the `--json` option."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say what went wrong on stderr, in red, and the exit to raise: `raise fail(...)`."""
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code)
