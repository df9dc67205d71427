"""`dagster-platform users`: console passwords for the users of the roles file, stored as
bcrypt hashes in `<state>/console_users.json` (owner-only)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dagster_platform.cli.common import fail
from dagster_platform.settings import get_settings

users_app = typer.Typer(
    help="Console sign-in: passwords for the users of the roles file.", no_args_is_help=True
)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("New password", hide_input=True)
    second = typer.prompt("Repeat it", hide_input=True)
    if first != second:
        raise fail("the two passwords differ; nothing was changed", code=2)
    return first


@users_app.command("set-password")
def set_password(
    user: Annotated[str, typer.Argument(help="A user of the roles file (data/roles.yaml).")],
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Set USER's console password (asked twice, not echoed; or one line from stdin)."""
    from dagster_platform.console.users import PasswordRefused, UserStore, users_file
    from dagster_platform.ontology.roles import RolesError, load_roles

    settings = get_settings()
    try:
        roles = load_roles(settings.roles_file)
    except RolesError as exc:
        raise fail(str(exc)) from None
    if not roles.knows(user):
        raise fail(f"unknown user {user!r} (known: {', '.join(roles.users)})", code=2)
    password = _read_password(stdin)
    store = UserStore(users_file(settings.state_dir))
    try:
        store.set_password(roles, user, password)
    except PasswordRefused as exc:
        raise fail(f"{exc}; nothing was changed", code=2) from None
    typer.echo(f"password of {user} set in {store.path}")


@users_app.command("list")
def list_users() -> None:
    """The users of the roles file, their roles, and whether they have a console password."""
    from dagster_platform.console.users import UserStore, users_file
    from dagster_platform.ontology.roles import RolesError, load_roles

    settings = get_settings()
    try:
        roles = load_roles(settings.roles_file)
    except RolesError as exc:
        raise fail(str(exc)) from None
    with_password = set(UserStore(users_file(settings.state_dir)).users())
    for user, held in roles.users.items():
        state = "password set" if user in with_password else "no password"
        typer.echo(f"{user:<12} {', '.join(held):<24} {state}")
