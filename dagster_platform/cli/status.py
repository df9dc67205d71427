"""`dagster-platform status`: what is configured and what is reachable."""

from __future__ import annotations

import json
from typing import Any

import typer

from dagster_platform.cli.common import JsonOption
from dagster_platform.settings import get_settings


def _print_status(status: dict[str, Any], indent: int = 0) -> None:
    for key, value in status.items():
        if isinstance(value, dict):
            typer.echo(" " * indent + f"{key}:")
            _print_status(value, indent + 2)
        else:
            typer.echo(" " * indent + f"{key}: {value}")


def status(as_json: JsonOption = False) -> None:
    """Show what is configured and what is reachable: state, data, warehouse, broker, models."""
    from dagster_platform.deploy.status import collect_status

    report = collect_status(get_settings())
    if as_json:
        typer.echo(json.dumps(report, ensure_ascii=False, default=str))
    else:
        _print_status(report)
