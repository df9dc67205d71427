"""Who is signed in to the console: signed session cookies over sessions this process keeps,
and a throttle on failed sign-ins.

The cookie holds only a random session id, signed and timestamped with a key made when the
process starts (itsdangerous), so a forged or expired cookie is refused before any lookup and a
restart signs everyone out. The session itself lives here, so signing out ends it on the server
too, not only in the browser that held the cookie. Failed sign-ins are counted per user name
and per client address in a moving window (`limits`); past the limit every attempt is refused
with the time to wait, a right password included, and the answer never says which part of a
sign-in was wrong.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from dagster_platform.console.users import UserStore
from dagster_platform.lib.logs import get_logger
from dagster_platform.ontology.roles import RolesError, load_roles
from dagster_platform.settings import Settings

log = get_logger(__name__)

SESSION_COOKIE = "dagster_platform_console"
SESSION_S = 8 * 3600.0
SIGN_IN_LIMIT = "5/15 minutes"
_SALT = "dagster-platform-console-session"


@dataclass(frozen=True)
class Session:
    user: str
    expires_at: float


class Sessions:
    """Signed cookies naming live sessions; each ends at its expiry or at sign-out."""

    def __init__(
        self,
        lifetime_s: float = SESSION_S,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.lifetime_s = lifetime_s
        self._serializer = URLSafeTimedSerializer(secret or secrets.token_bytes(32), salt=_SALT)
        self._clock = clock
        self._live: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        """A new session for `user`; the cookie value that names it."""
        session_id = secrets.token_urlsafe(24)
        with self._lock:
            self._live[session_id] = Session(user, self._clock() + self.lifetime_s)
        return self._serializer.dumps(session_id)

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            return self._serializer.loads(cookie, max_age=int(self.lifetime_s))
        except BadSignature:  # forged, altered or older than the lifetime
            return None

    def user_of(self, cookie: str | None) -> str | None:
        """The signed-in user a cookie names, or None (forged, expired, signed out)."""
        session_id = self._session_id(cookie)
        if session_id is None:
            return None
        with self._lock:
            session = self._live.get(session_id)
            if session is not None and session.expires_at <= self._clock():
                del self._live[session_id]
                session = None
        return None if session is None else session.user

    def close(self, cookie: str | None) -> str | None:
        """End the session a cookie names; the user it was, if any."""
        session_id = self._session_id(cookie)
        with self._lock:
            session = self._live.pop(session_id, None) if session_id else None
        return None if session is None else session.user


class SignInThrottle:
    """Failed sign-ins per user name and per client address in a moving window."""

    def __init__(self, limit: str = SIGN_IN_LIMIT):
        self._limit = parse(limit)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    @staticmethod
    def _keys(user: str, client: str) -> tuple[str, str]:
        return f"user:{user.strip().lower()}", f"client:{client}"

    def retry_after(self, user: str, client: str) -> int | None:
        """Seconds until another attempt is allowed, or None while attempts are allowed."""
        waits = [
            self._limiter.get_window_stats(self._limit, key).reset_time - time.time()
            for key in self._keys(user, client)
            if not self._limiter.test(self._limit, key)
        ]
        return max(1, int(max(waits)) + 1) if waits else None

    def failed(self, user: str, client: str) -> None:
        for key in self._keys(user, client):
            self._limiter.hit(self._limit, key)

    def succeeded(self, user: str) -> None:
        """A right password clears the user's count (the address keeps its own)."""
        self._limiter.clear(self._limit, self._keys(user, "")[0])


class Authenticator:
    """A sign-in is right when the roles file knows the user and the password is theirs."""

    def __init__(self, settings: Settings, store: UserStore):
        self.settings = settings
        self.store = store

    def known(self, user: str) -> bool:
        try:
            return load_roles(self.settings.roles_file).knows(user)
        except RolesError as exc:
            log.error("roles file unreadable; nobody can sign in", extra={"error": str(exc)})
            return False

    def check(self, user: str, password: str) -> bool:
        return self.store.verify(user, password) and self.known(user)

    def loggable(self, user: str) -> str:
        """The name to log for an attempt: a user the roles file knows, never what else was
        typed (a password typed into the name field must not reach the logs)."""
        return user if self.known(user) else "(not a user of the roles file)"
