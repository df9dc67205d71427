"""`dagster-platform adapters`: the fine-tuned adapters in the model registry, and putting the
previous champion back.

A rollback is verified like a promotion: this process asks the LLM service to serve the
version it moved `champion` to, and the command exits 1, with the alias restored, when that
version does not serve. Other processes pick the change up at their next registry check.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer

from dagster_platform.cli.common import JsonOption, fail
from dagster_platform.llm.registry import AdapterRegistry, AdapterVersion, RegistryError
from dagster_platform.settings import get_settings

adapters_app = typer.Typer(
    help="Fine-tuned LoRA adapters: list the registered versions, roll the champion back.",
    no_args_is_help=True,
)


def _registry() -> AdapterRegistry:
    settings = get_settings()
    return AdapterRegistry(settings.resolved_mlflow_tracking_uri, settings.registered_model)


def _line(version: AdapterVersion) -> str:
    aliases = ",".join(version.aliases) or "-"
    dataset = version.dataset_version or "-"
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(version.metrics.items()))
    gate = version.tags.get("gate")
    return (
        f"v{version.version:<4} {aliases:<22} {version.created_at:%Y-%m-%d %H:%M:%S %Z}  "
        f"dataset {dataset}"
        + (f"  gate {gate}" if gate else "")
        + (f"  {metrics}" if metrics else "")
    )


def _version(version: str | None) -> str:
    return "unset (the base model serves)" if version is None else f"v{version}"


@adapters_app.command("list")
def list_command(as_json: JsonOption = False) -> None:
    """Registered adapter versions, newest first, with their aliases, dataset and metrics."""
    registry = _registry()
    try:
        versions = registry.versions()
    except Exception as exc:  # MLflow raises many types for an unreadable store
        raise fail(f"cannot read the model registry at {registry.tracking_uri}: {exc}") from exc
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    if not versions:
        typer.echo(f"no adapter versions of {registry.registered_model} yet")
    for version in versions:
        typer.echo(_line(version))


@adapters_app.command("rollback")
def rollback_command(
    to: Annotated[
        str | None,
        typer.Option("--to", help="The version to serve; default: the champion before this one."),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Who rolls back (recorded); default: you.")
    ] = None,
) -> None:
    """Make the previous champion (or --to VERSION) the champion again and serve it."""
    from mlflow.exceptions import MlflowException

    from dagster_platform.finetune.promotion import RollbackError, rollback
    from dagster_platform.lib.warehouse import open_warehouse
    from dagster_platform.llm.base import LLMError
    from dagster_platform.llm.service import LLMConfig, get_service

    settings = get_settings()
    registry = _registry()
    try:
        service = get_service(LLMConfig.from_settings(settings))
        outcome = rollback(
            registry,
            service,
            lambda: open_warehouse(settings.warehouse_path),
            user or getpass.getuser(),
            to_version=to,
        )
    except (RollbackError, RegistryError, LLMError, MlflowException) as exc:
        raise fail(str(exc)) from exc
    if not outcome.ok:
        raise fail("; ".join(outcome.reasons))
    typer.secho(
        f"champion is now {_version(outcome.champion_after)}; serving {outcome.served}",
        fg=typer.colors.GREEN,
    )
