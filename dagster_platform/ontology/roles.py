"""Who may approve what: the users and their roles, read from `data/roles.yaml`.

Action types name the role their approver needs; this file says who holds it. It is checked
whole when loaded, so a typo in a role name fails loudly instead of silently locking an
approver out (or letting nobody approve).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dagster_platform.lib.yaml_models import load_model


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
    return load_model(
        path,
        Roles,
        RolesError,
        name="roles file",
        expected="users and roles",
        shape="must be a mapping with `roles` and `users`",
    )
