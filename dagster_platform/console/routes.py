"""The console on the HTTP API: the sign-in and sign-out routes, a gate that sends a visitor
without a session to the sign-in page, and the Gradio page mounted behind them.

Gradio answers every one of its own routes (the page, its config, the queue) only when
`auth_dependency` names a user, so the signed cookie is checked on each request the page makes,
not once at sign-in. The sign-in form carries a token that must match a cookie the form's page
set (double submit), so another site cannot sign a browser in under an account of its choosing.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dagster_platform.console.auth import (
    SESSION_COOKIE,
    Authenticator,
    Sessions,
    SignInThrottle,
)
from dagster_platform.console.users import MAX_PASSWORD_BYTES, UserStore, users_file
from dagster_platform.console.views import TITLE, esc
from dagster_platform.lib.logs import get_logger

if TYPE_CHECKING:
    from dagster_platform.console.page import ConsoleServices

log = get_logger(__name__)

CONSOLE_PATH = "/ui"
FORM_COOKIE = "dagster_platform_signin_form"
WRONG = "Wrong user name or password."
MAX_NAME_CHARS = 256

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 22rem; margin: 5rem auto; }}
label, input, button {{ display: block; width: 100%; margin: .3rem 0; }}
input, button {{ padding: .5rem; font-size: 1rem; box-sizing: border-box; }}
.error {{ color: #b91c1c; }}
</style></head>
<body><h1>Sign in</h1><p>{title}</p>
<p class="error" id="sign-in-error" role="alert">{error}</p>
<form method="post" action="{action}">
<input type="hidden" name="form_token" value="{token}">
<label for="username">User</label>
<input id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button id="sign-in" type="submit">Sign in</button>
</form>
<p><small>Users are those of the roles file; an operator sets a password with
<code>dagster-platform users set-password USER</code>.</small></p></body></html>
"""


class SignInGate:
    """Sends a browser that opens the console page without a live session to the sign-in
    page, instead of Gradio's bare 401; every other request goes on to be checked there."""

    def __init__(self, app: ASGIApp, path: str, sessions: Sessions):
        self.app = app
        self.pages = {path, path + "/"}
        self.login = f"{path}/login"
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"] in self.pages
            and self.sessions.user_of(Request(scope).cookies.get(SESSION_COOKIE)) is None
        ):
            await RedirectResponse(self.login, status_code=303)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _set_cookie(response: Response, request: Request, name: str, value: str, **kw) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        **kw,
    )


def sign_in_routes(
    app: FastAPI,
    path: str,
    sessions: Sessions,
    authenticator: Authenticator,
    throttle: SignInThrottle,
) -> list[Callable]:
    """Add GET/POST `{path}/login` and GET `{path}/logout`; the endpoints added."""
    login_path = f"{path}/login"

    def form(request: Request, error: str = "", status_code: int = 200) -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        page = _FORM.format(title=esc(TITLE), error=esc(error), action=login_path, token=token)
        response = HTMLResponse(page, status_code=status_code)
        _set_cookie(response, request, FORM_COOKIE, token, path=login_path, max_age=3600)
        return response

    @app.get(login_path, include_in_schema=False)
    def sign_in_form(request: Request) -> HTMLResponse:
        return form(request)

    @app.post(login_path, include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        fields = await request.form()
        user = str(fields.get("username", "")).strip()[:MAX_NAME_CHARS]
        password = str(fields.get("password", ""))[: MAX_PASSWORD_BYTES * 4]
        token = str(fields.get("form_token", ""))
        expected = request.cookies.get(FORM_COOKIE, "")
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            return form(request, "The sign-in form expired: please try again.", 400)
        client = _client(request)
        wait = throttle.retry_after(user, client)
        if wait is not None:
            log.warning("console sign-in throttled", extra={"user": authenticator.loggable(user)})
            response = form(request, f"Too many failed sign-ins: try again in {wait} s.", 429)
            response.headers["Retry-After"] = str(wait)
            return response
        if not authenticator.check(user, password):
            throttle.failed(user, client)
            log.warning("console sign-in failed", extra={"user": authenticator.loggable(user)})
            return form(request, WRONG, 401)
        throttle.succeeded(user)
        log.info("console sign-in", extra={"user": user})
        response = RedirectResponse(f"{path}/", status_code=303)
        _set_cookie(
            response,
            request,
            SESSION_COOKIE,
            sessions.open(user),
            path=path,
            max_age=int(sessions.lifetime_s),
        )
        response.delete_cookie(FORM_COOKIE, path=login_path)
        return response

    @app.get(f"{path}/logout", include_in_schema=False)
    def sign_out(request: Request) -> Response:
        user = sessions.close(request.cookies.get(SESSION_COOKIE))
        if user:
            log.info("console sign-out", extra={"user": user})
        response = RedirectResponse(login_path, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=path)
        return response

    return [sign_in_form, sign_in, sign_out]


def mount_console(
    app: FastAPI,
    services: ConsoleServices,
    *,
    path: str = CONSOLE_PATH,
    sessions: Sessions | None = None,
    throttle: SignInThrottle | None = None,
    effect_timeout_s: float | None = None,
) -> Sessions:
    """Serve the console at `path` of `app` (sign-in first); the sessions it keeps. Call it
    before the app starts: the sign-in routes must come before Gradio's mount."""
    import gradio as gr

    from dagster_platform.console.page import CSS, ConsolePage

    settings = services.settings
    sessions = sessions or Sessions()
    authenticator = Authenticator(settings, UserStore(users_file(settings.state_dir)))
    endpoints = sign_in_routes(app, path, sessions, authenticator, throttle or SignInThrottle())
    limiter = getattr(app.state, "limiter", None)
    for endpoint in endpoints if limiter is not None else ():
        limiter.exempt(endpoint)  # the throttle above is their limit
    app.add_middleware(SignInGate, path=path, sessions=sessions)
    extra = {} if effect_timeout_s is None else {"effect_timeout_s": effect_timeout_s}
    page = ConsolePage(services, path=path, **extra)
    blocks = page.build()
    _idle_quietly(blocks)
    gr.mount_gradio_app(
        app,
        blocks,
        path=path,
        auth_dependency=lambda request: sessions.user_of(request.cookies.get(SESSION_COOKIE)),
        footer_links=[],
        run_history=False,
        show_error=False,
        css=CSS,
    )
    return sessions


IDLE_POLL_S = 0.05


def _idle_quietly(blocks: object) -> None:
    """Gradio's queue polls for work every millisecond when it has none (10 ms for progress),
    which kept 3-4 % of a core busy in an API nobody was using; 50 ms is as quick to a person
    and costs nothing measurable. Gradio has no option for it: these are its queue's own
    attributes, set when they exist."""
    queue = getattr(blocks, "_queue", None)
    for attribute in ("sleep_when_free", "progress_update_sleep_when_free"):
        if queue is not None and hasattr(queue, attribute):
            setattr(queue, attribute, IDLE_POLL_S)
