"""`dagster-platform actions`: propose, approve, reject and retry ontology actions, and read
their audit trail.

Approving runs the action at once; the command exits 1 when it did not run (refused, or its
effect failed), so a script never mistakes a failed kill for a done one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import duckdb
import typer

from dagster_platform.cli.common import JsonOption, fail
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.ontology.actions import (
    ActionError,
    ActionStatus,
    approve,
    list_actions,
    parameters_from_text,
    propose,
    reject,
    retry,
    show,
    status_of,
)
from dagster_platform.ontology.loader import LoadedOntology, OntologyError, load_ontology
from dagster_platform.ontology.roles import Roles, RolesError, load_roles
from dagster_platform.settings import get_settings

actions_app = typer.Typer(
    help="Ontology actions: proposals that run once a person with the right role approves.",
    no_args_is_help=True,
)

ById = Annotated[str, typer.Option("--by", help="Who does this (a user of the roles file).")]


@contextmanager
def _warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    path = get_settings().warehouse_path
    if not path.is_file():
        raise fail(f"no warehouse at {path}: materialize the ingestion assets first")
    try:
        with open_warehouse(path) as conn:
            try:
                yield conn
            except ActionError as exc:
                raise fail(str(exc)) from exc
    except duckdb.IOException as exc:  # another process kept the write lock
        raise fail(f"cannot open the warehouse {path}: {exc}") from exc


def _ontology() -> LoadedOntology:
    try:
        return load_ontology(get_settings().ontology_dir)
    except OntologyError as exc:
        raise fail(str(exc)) from exc


def _roles(user: str) -> Roles:
    try:
        roles = load_roles(get_settings().roles_file)
    except RolesError as exc:
        raise fail(str(exc)) from exc
    if not roles.knows(user):
        raise fail(f"unknown user {user!r} (known: {', '.join(roles.users)})")
    return roles


def _params(pairs: list[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise fail(f"--param {pair!r}: write it as name=value")
        parsed[name.strip()] = value
    return parsed


def _line(action: ActionStatus) -> str:
    return (
        f"{action.action_id}  {action.status:<8}  {action.action_type} {action.target_key}  "
        f"by {action.proposed_by}, {action.updated_at:%Y-%m-%d %H:%M:%S %Z}"
    )


def _outcome(action: ActionStatus) -> None:
    """Print how the execution ended; exit 1 when the effect did not happen."""
    if action.status == "executed":
        typer.secho(f"{action.action_id} executed: {action.detail}", fg=typer.colors.GREEN)
        return
    hint = (
        f" (retryable: dagster-platform actions retry {action.action_id} --by USER)"
        if action.retryable
        else ""
    )
    raise fail(f"{action.action_id} {action.status}: {action.detail}{hint}")


@actions_app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(help="Only actions in this status.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Actions as they stand, most recently changed first."""
    with _warehouse() as conn:
        actions = list_actions(conn, status)
    if as_json:
        typer.echo(json.dumps([a.to_dict() for a in actions], indent=2))
        return
    if not actions:
        typer.echo("no actions" + (f" with status {status}" if status else ""))
    for action in actions:
        typer.echo(_line(action))


@actions_app.command("show")
def show_command(action_id: str, as_json: JsonOption = False) -> None:
    """One action and its whole audit trail."""
    with _warehouse() as conn:
        trail = show(conn, action_id)
        action = status_of(conn, action_id)
    if as_json:
        document: dict[str, Any] = {**action.to_dict(), "trail": [r.to_dict() for r in trail]}
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(_line(action))
    typer.echo(f"  parameters: {json.dumps(action.parameters)}")
    for row in trail:
        detail = f"  {row.detail}" if row.detail else ""
        typer.echo(f"  {row.recorded_at:%Y-%m-%d %H:%M:%S}  {row.step:<8}  {row.actor}{detail}")


@actions_app.command("propose")
def propose_command(
    action_type: str,
    target_key: str,
    by: ById,
    why: Annotated[str, typer.Option("--why", help="Why the action is needed.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A parameter as name=value; repeat.")
    ] = None,
) -> None:
    """Propose an action on an object; it runs only once approved."""
    loaded = _ontology()
    _roles(by)
    with _warehouse() as conn:
        texts = _params(param or [])
        declared = loaded.ontology.action_types.get(action_type)
        values = parameters_from_text(declared, texts) if declared else texts
        action_id = propose(conn, loaded, action_type, target_key, values, by, why)
    typer.echo(action_id)


def _run(step: Callable[..., ActionStatus], action_id: str, by: str) -> None:
    """Approve or retry: both run the effect with the configured broker and ResourceManager."""
    loaded, roles, settings = _ontology(), _roles(by), get_settings()
    with _warehouse() as conn:
        action = step(
            conn,
            loaded,
            roles,
            action_id,
            by,
            bootstrap_servers=settings.bootstrap_servers,
            yarn_url=settings.yarn_resource_manager_url,
        )
    _outcome(action)


@actions_app.command("approve")
def approve_command(action_id: str, by: ById) -> None:
    """Approve a proposed action and run it."""
    _run(approve, action_id, by)


@actions_app.command("reject")
def reject_command(
    action_id: str,
    by: ById,
    why: Annotated[str, typer.Option("--why", help="Why it must not run.")],
) -> None:
    """Close a proposed action without running it."""
    roles = _roles(by)
    with _warehouse() as conn:
        action = reject(conn, _ontology(), roles, action_id, by, why)
    typer.echo(f"{action.action_id} rejected by {by}")


@actions_app.command("retry")
def retry_command(action_id: str, by: ById) -> None:
    """Run an approved action again after a retryable failure (e.g. the broker was down)."""
    _run(retry, action_id, by)
