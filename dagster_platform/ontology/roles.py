"""Who may approve what: the users and their roles, read from `data/roles.yaml`.

Action types name the role their approver needs; this file says who holds it. It is checked
whole when loaded, so a typo in a role name fails loudly instead of silently locking an
approver out (or letting nobody approve).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RolesError(ValueError):
    """The roles file is missing or invalid; the message names the file."""


class Roles(BaseModel):
    """Role name → description, and user → the roles they hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[str, str] = Field(min_length=1)
    users: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_roles(self) -> Roles:
        for user, held in self.users.items():
            unknown = sorted(set(held) - set(self.roles))
            if unknown:
                raise ValueError(
                    f"user {user!r} has unknown role(s) {', '.join(unknown)} "
                    f"(declared: {', '.join(self.roles)})"
                )
        return self

    def has(self, user: str, role: str) -> bool:
        return role in self.users.get(user, ())

    def knows(self, user: str) -> bool:
        return user in self.users


def load_roles(path: Path) -> Roles:
    """Parse and check the roles file; raise :class:`RolesError` naming it on any problem."""
    if not path.is_file():
        raise RolesError(f"{path}: roles file does not exist")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RolesError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise RolesError(f"{path}: must be a mapping with `roles` and `users`")
    try:
        return Roles.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
        raise RolesError(f"{path}: {problems}") from None


def _problem(loc: tuple[str | int, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    return f"{'.'.join(str(p) for p in loc)}: {message}" if loc else message
