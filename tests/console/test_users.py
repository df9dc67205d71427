"""Console passwords: bcrypt hashes in an owner-only file, set from the command line, never
shown; sessions and the sign-in throttle."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dagster_platform.cli import app
from dagster_platform.console.auth import Authenticator, Sessions, SignInThrottle
from dagster_platform.console.users import PasswordRefused, UserStore, users_file
from dagster_platform.ontology.roles import load_roles
from dagster_platform.settings import Settings
from tests.support.state import ROLES_FILE

SECRET = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(users_file(tmp_path), rounds=4)


def test_a_password_is_stored_hashed_owner_only_and_checked(store: UserStore) -> None:
    roles = load_roles(ROLES_FILE)
    store.set_password(roles, "alice", SECRET)
    text = store.path.read_text()
    assert SECRET not in text and json.loads(text)["users"]["alice"]["bcrypt"].startswith("$2")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify("alice", SECRET)
    assert not store.verify("alice", SECRET + "!")
    assert not store.verify("alice", SECRET + "x" * 80)  # past bcrypt's 72 bytes: refused
    assert not store.verify("bob", SECRET)  # no password set
    assert not store.verify("mallory", SECRET)  # unknown
    assert store.users() == ["alice"]


@pytest.mark.parametrize(
    ("user", "password", "message"),
    [
        ("mallory", SECRET, "unknown user 'mallory'"),
        ("alice", "short", "shorter than 8"),
        ("alice", "é" * 40, "longer than 72 bytes"),
    ],
)
def test_bad_passwords_are_refused(
    store: UserStore, user: str, password: str, message: str
) -> None:
    with pytest.raises(PasswordRefused, match=message):
        store.set_password(load_roles(ROLES_FILE), user, password)
    assert not store.path.exists()


def test_the_cli_sets_a_password_from_stdin_or_asked_twice(state_dir: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["users", "set-password", "alice", "--stdin"], input=SECRET + "\n")
    assert done.exit_code == 0, done.output
    assert SECRET not in done.output
    store = UserStore(users_file(state_dir))
    assert store.verify("alice", SECRET)

    asked = runner.invoke(app, ["users", "set-password", "bob"], input=f"{SECRET}\n{SECRET}\n")
    assert asked.exit_code == 0, asked.output
    assert SECRET not in asked.output and store.verify("bob", SECRET)

    differ = runner.invoke(app, ["users", "set-password", "carol"], input=f"{SECRET}\nother\n")
    assert differ.exit_code == 2 and "differ" in differ.output
    unknown = runner.invoke(app, ["users", "set-password", "mallory", "--stdin"], input=SECRET)
    assert unknown.exit_code == 2 and "unknown user 'mallory'" in unknown.output
    short = runner.invoke(app, ["users", "set-password", "carol", "--stdin"], input="abc\n")
    assert short.exit_code == 2 and "shorter than 8" in short.output
    listed = runner.invoke(app, ["users", "list"])
    assert "alice" in listed.output and "no password" in listed.output  # carol, dave
    assert store.users() == ["alice", "bob"]


def test_only_users_of_the_roles_file_sign_in(tmp_path: Path) -> None:
    store = UserStore(users_file(tmp_path), rounds=4)
    store.set_password(load_roles(ROLES_FILE), "carol", SECRET)
    roles = tmp_path / "roles.yaml"
    roles.write_text("roles: {sre: on call}\nusers: {alice: [sre]}\n")
    authenticator = Authenticator(Settings(state_dir=tmp_path, roles_file=roles), store)
    assert not authenticator.check("carol", SECRET)  # a hash, but no longer in the roles file


def test_a_session_ends_when_it_expires_is_closed_or_the_cookie_is_forged() -> None:
    now = [1000.0]
    sessions = Sessions(lifetime_s=60, clock=lambda: now[0])
    cookie = sessions.open("alice")
    assert sessions.user_of(cookie) == "alice"
    assert sessions.user_of(cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")) is None
    assert sessions.user_of(Sessions().open("alice")) is None  # signed with another key
    assert sessions.user_of("") is None and sessions.user_of(None) is None
    now[0] += 61
    assert sessions.user_of(cookie) is None  # expired
    other = sessions.open("bob")
    assert sessions.close(other) == "bob" and sessions.user_of(other) is None


def test_the_signature_carries_its_own_age() -> None:
    sessions = Sessions(lifetime_s=1)
    cookie = sessions.open("alice")
    time.sleep(2.1)
    assert sessions.user_of(cookie) is None


def test_failed_sign_ins_are_throttled_per_user_and_per_address() -> None:
    throttle = SignInThrottle("3/minute")
    for _ in range(3):
        assert throttle.retry_after("alice", "10.0.0.1") is None
        throttle.failed("alice", "10.0.0.1")
    wait = throttle.retry_after("alice", "10.0.0.1")
    assert wait is not None and 0 < wait <= 61
    assert throttle.retry_after("ALICE", "10.0.0.2") is not None  # the user, from anywhere
    assert throttle.retry_after("bob", "10.0.0.1") is not None  # the address, for anyone
    assert throttle.retry_after("bob", "10.0.0.2") is None
