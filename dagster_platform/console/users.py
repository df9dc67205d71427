"""Console passwords: bcrypt hashes of the users the roles file names, in one owner-only file.

Only people the roles file knows can have a password, so the roles file stays the one list of
who may do what. The file holds hashes only; a password is never stored, printed or logged.
Checking an unknown user costs one bcrypt comparison like a known one, so the time taken does
not tell which part of a sign-in was wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import bcrypt

from dagster_platform.lib.logs import get_logger
from dagster_platform.ontology.roles import Roles

log = get_logger(__name__)

USERS_FILE = "console_users.json"
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; a longer one is refused, never cut
# a hash of a random password, compared when the user has none, so both paths cost the same
_DUMMY_HASH = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt())


class PasswordRefused(ValueError):
    """The password cannot be set: unknown user, too short or too long."""


def users_file(state_dir: Path) -> Path:
    return state_dir / USERS_FILE


class UserStore:
    """The password hashes of `<state>/console_users.json`, read on every check so that a
    password set from the command line counts at once."""

    def __init__(self, path: Path, rounds: int = 12):
        self.path = path
        self.rounds = rounds

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return dict(document.get("users", {}))

    def users(self) -> list[str]:
        """Who has a password."""
        return sorted(self._read())

    def set_password(self, roles: Roles, user: str, password: str) -> None:
        if not roles.knows(user):
            raise PasswordRefused(f"unknown user {user!r} (known: {', '.join(roles.users)})")
        if len(password) < MIN_PASSWORD_CHARS:
            raise PasswordRefused(f"the password is shorter than {MIN_PASSWORD_CHARS} characters")
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise PasswordRefused(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(self.rounds)).decode()
        users = self._read()
        users[user] = {"bcrypt": hashed, "set_at": datetime.now(UTC).isoformat()}
        self._write(users)
        log.info("console password set", extra={"user": user, "path": str(self.path)})

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        """Replace the file atomically, created owner-only before anything is written to it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".console_users.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"users": users}, handle, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def verify(self, user: str, password: str) -> bool:
        """Whether `password` is `user`'s; False for an unknown user or one without a password,
        after the same bcrypt work."""
        entry = self._read().get(user)
        candidate = password.encode()
        usable = entry is not None and len(candidate) <= MAX_PASSWORD_BYTES
        stored = entry["bcrypt"].encode() if usable and entry else _DUMMY_HASH
        return bcrypt.checkpw(candidate[:MAX_PASSWORD_BYTES], stored) and usable
