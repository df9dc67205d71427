"""Signing in to the console over HTTP: a wrong password says nothing of which part was wrong,
failures are throttled, the session cookie is HttpOnly, SameSite=Strict, signed and expiring,
and a forged, expired or signed-out cookie reaches nothing of the page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dagster_platform.api.app import Services
from dagster_platform.console.auth import SESSION_COOKIE, Sessions, SignInThrottle
from dagster_platform.console.routes import WRONG, mount_console
from dagster_platform.console.users import UserStore, users_file
from dagster_platform.ontology.roles import load_roles
from dagster_platform.settings import Settings
from tests.support.state import ONTOLOGY_DIR, ROLES_FILE

PASSWORD = "alice-console-pw-1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(state_dir=tmp_path, ontology_dir=ONTOLOGY_DIR, roles_file=ROLES_FILE)
    UserStore(users_file(tmp_path), rounds=4).set_password(
        load_roles(ROLES_FILE), "alice", PASSWORD
    )
    return settings


def _client(settings: Settings, **options) -> Iterator[tuple[TestClient, Sessions]]:
    app = FastAPI()
    sessions = mount_console(
        app, Services(settings, lambda s: None, publish_timeout_s=1), **options
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, sessions


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[TestClient, Sessions]]:
    yield from _client(settings, throttle=SignInThrottle("3/minute"))


def _form(client: TestClient) -> str:
    page = client.get("/ui/login")
    assert page.status_code == 200
    return re.search(r'name="form_token" value="([^"]+)"', page.text).group(1)


def sign_in(client: TestClient, user: str, password: str):
    token = _form(client)
    return client.post(
        "/ui/login",
        data={"username": user, "password": password, "form_token": token},
        follow_redirects=False,
    )


def test_the_page_sends_a_visitor_without_a_session_to_sign_in(client) -> None:
    http, _ = client
    response = http.get("/ui/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert http.get("/ui/config").status_code == 401  # Gradio's own routes check it too


def test_a_right_password_opens_a_session_with_a_safe_cookie(client) -> None:
    http, sessions = client
    response = sign_in(http, "alice", PASSWORD)
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    cookie = response.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    assert "Path=/ui" in cookie and PASSWORD not in cookie
    assert http.get("/ui/").status_code == 200
    assert http.get("/ui/config").status_code == 200
    value = http.cookies[SESSION_COOKIE]
    assert sessions.user_of(value) == "alice"

    out = http.get("/ui/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert sessions.user_of(value) is None  # ended on the server, not only in the browser
    http.cookies.set(SESSION_COOKIE, value, path="/ui")  # a copy kept by a thief
    assert http.get("/ui/config").status_code == 401


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "not-her-password"), ("mallory", PASSWORD), ("bob", PASSWORD), ("", "")],
    ids=["wrong-password", "unknown-user", "no-password-set", "blank"],
)
def test_a_wrong_sign_in_gives_no_hint_which_part_was_wrong(
    client, user: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    http, _ = client
    response = sign_in(http, user, password)
    assert response.status_code == 401
    assert WRONG in response.text
    assert "password is" not in response.text and "unknown" not in response.text.lower()
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert all(password not in r.getMessage() + str(r.__dict__) for r in caplog.records if password)


def test_a_password_typed_as_the_user_name_is_not_logged(
    client, caplog: pytest.LogCaptureFixture
) -> None:
    http, _ = client
    assert sign_in(http, PASSWORD, PASSWORD).status_code == 401
    assert all(PASSWORD not in str(r.__dict__) for r in caplog.records)
    assert any(getattr(r, "user", "") == "(not a user of the roles file)" for r in caplog.records)


def test_failed_sign_ins_are_throttled_then_even_the_right_password_waits(client) -> None:
    http, _ = client
    assert [sign_in(http, "alice", f"guess-{n}").status_code for n in range(3)] == [401] * 3
    refused = sign_in(http, "alice", PASSWORD)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 61
    assert "Too many failed sign-ins" in refused.text
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")


def test_a_sign_in_without_the_forms_token_is_refused(client) -> None:
    http, _ = client
    response = http.post(
        "/ui/login",
        data={"username": "alice", "password": PASSWORD, "form_token": "made-up"},
        follow_redirects=False,
    )
    assert response.status_code == 400 and "expired" in response.text


@pytest.mark.parametrize("cookie", ["alice", "InRydXN0LW1lIg.ZZZZZZ.forged-signature", ""])
def test_a_forged_cookie_reaches_nothing(client, cookie: str) -> None:
    http, _ = client
    http.cookies.set(SESSION_COOKIE, cookie, path="/ui")
    assert http.get("/ui/", follow_redirects=False).status_code == 303
    assert http.get("/ui/config").status_code == 401
    assert http.post("/ui/gradio_api/queue/join", json={}).status_code == 401


def test_an_expired_session_reaches_nothing(settings: Settings) -> None:
    for http, _ in _client(settings, sessions=Sessions(lifetime_s=1)):
        assert sign_in(http, "alice", PASSWORD).status_code == 303
        assert http.get("/ui/config").status_code == 200
        time.sleep(2.1)
        assert http.get("/ui/", follow_redirects=False).status_code == 303
        assert http.get("/ui/config").status_code == 401
