"""The HTTP API of the assistant: ask, rate an answer, see what serves.

Every route needs an API key (`X-API-Key`, or `Authorization: Bearer`); its name, never the
key, is who the feedback is from and whose budget a request spends. The rate limit is one
budget per key across the routes; requests without a valid key share one per client address,
so guessing keys is throttled too.

The assistant is opened on the first question and kept: it holds the embedder and the LLM.
Endpoints are plain functions that FastAPI runs in its threadpool, and questions are answered
side by side, so a vLLM server batches the generations of everyone asking at once. An answer
both reads and writes the warehouse file; `open_warehouse` shares this process's one
connection to it, readers together and writers in turn.

The ops console (`dagster_platform.console`) is mounted at `/ui` on the same app and shares the
one assistant and feedback producer (`Services`); it signs people in with their own passwords
and session cookies, never API keys. Proposals and outcomes are posted to the webhook of the
settings, wherever they happen in this process.

`GET /metrics` is the exception to keys and limit: Prometheus scrapes without a key, so it
answers without one, is not rate limited, and is left out of the request metrics it serves.
It holds counts and latencies by route template, method, status, agent route and rating —
nothing a key, a user or a question could be read from — added up over every process that
records into the metrics folder (`dagster_platform.lib.metrics`), the landing runs included.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from limits import parse as parse_limit
from pydantic import BaseModel, Field
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.middleware import SlowAPIASGIMiddleware
from slowapi.util import get_remote_address
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dagster_platform import __version__
from dagster_platform.agents import interactions
from dagster_platform.agents.assistant import Assistant, QuestionRejected
from dagster_platform.console import notify
from dagster_platform.console.routes import mount_console
from dagster_platform.deploy.status import broker_status, warehouse_status
from dagster_platform.finetune.feedback import (
    MAX_ID_CHARS,
    FeedbackPublisher,
    InvalidFeedback,
    Rating,
    build_feedback,
)
from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.lib import metrics
from dagster_platform.lib.logs import get_logger
from dagster_platform.settings import Settings

log = get_logger(__name__)

METRICS_PATH = "/metrics"

KEY_FILE = "api_key"
LOCAL_KEY_NAME = "local"
MIN_KEY_CHARS = 16
WAREHOUSE_WAIT_S = 5.0

AssistantFactory = Callable[[Settings], Assistant]


# --- keys -----------------------------------------------------------------------------------


def parse_api_keys(text: str) -> dict[str, str]:
    """`name:key,name:key` → {name: key}; errors name the item, never the key."""
    keys: dict[str, str] = {}
    for number, item in enumerate(text.split(","), start=1):
        name, sep, key = (part.strip() for part in item.partition(":"))
        where = f"DAGSTER_PLATFORM_API_KEYS item {number}"
        if not sep or not name or not key:
            raise ValueError(f"{where} is not `name:key`")
        if len(name) > MAX_ID_CHARS:
            raise ValueError(f"{where}: the name is longer than {MAX_ID_CHARS} characters")
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(
                f"{where} ({name}): the key is shorter than {MIN_KEY_CHARS} characters"
            )
        if name in keys or key in keys.values():
            raise ValueError(f"{where} ({name}): the name or the key is given twice")
        keys[name] = key
    return keys


def key_file(settings: Settings) -> Path:
    return settings.state_dir / KEY_FILE


def configured_keys(settings: Settings) -> dict[str, str]:
    """The keys of the settings, else the local key `serve` made; empty when there is none."""
    if settings.api_keys:
        return parse_api_keys(settings.api_keys)
    path = key_file(settings)
    if not path.is_file():
        return {}
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"{path} holds no usable key: delete it and a new one is made")
    return {LOCAL_KEY_NAME: key}


def create_local_key(settings: Settings) -> Path:
    """A new random key in `<state>/api_key`, readable by its owner only; never overwrites."""
    path = key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    log.info("api key created", extra={"path": str(path)})
    return path


class ApiKeys:
    """Who a presented key belongs to, compared in constant time against every key."""

    def __init__(self, keys: Mapping[str, str]):
        if not keys:
            raise ValueError(
                "no API key configured: set DAGSTER_PLATFORM_API_KEYS (name:key,...) or run "
                "`dagster-platform serve` once to create one"
            )
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    def name_of(self, presented: str | None) -> str | None:
        if not presented:
            return None
        given = presented.encode()
        found = None
        for name, key in self._keys:
            if hmac.compare_digest(given, key):
                found = name
        return found


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _caller(request: Request) -> str:
    """The name of the key the request presents; 401 without a valid one."""
    name = request.app.state.api_keys.name_of(presented_key(request))
    if name is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key is required (X-API-Key header or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


Caller = Annotated[str, Depends(_caller)]
KEY_REQUIRED = [Depends(_caller)]


# --- what the endpoints share ---------------------------------------------------------------


def _open_assistant(settings: Settings) -> Assistant:
    return Assistant.open(settings)


class Services:
    """The assistant (opened on first use) and the feedback producer."""

    def __init__(
        self, settings: Settings, assistant_factory: AssistantFactory, publish_timeout_s: float
    ):
        self.settings = settings
        self._factory = assistant_factory
        self._publish_timeout_s = publish_timeout_s
        self._open_lock = threading.Lock()
        self._publisher_lock = threading.Lock()
        self.assistant: Assistant | None = None
        self._publisher: FeedbackPublisher | None = None

    def open_assistant(self) -> Assistant:
        with self._open_lock:
            if self.assistant is None:
                self.assistant = self._factory(self.settings)
            return self.assistant

    def publisher(self) -> FeedbackPublisher:
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = FeedbackPublisher(
                    self.settings.bootstrap_servers, timeout_s=self._publish_timeout_s
                )
            return self._publisher

    def close(self) -> None:
        if self.assistant is not None:
            self.assistant.close()
        if self._publisher is not None:
            self._publisher.close()


# --- bodies ---------------------------------------------------------------------------------


class AskRequest(BaseModel):
    question: str
    session_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)


class AskResponse(BaseModel):
    interaction_id: str
    session_id: str
    answer: str
    route: str | None
    status: str
    proposed_actions: list[str]
    model: str | None
    adapter: str | None


class FeedbackRequest(BaseModel):
    interaction_id: str
    rating: Rating
    correction: str | None = None
    comment: str | None = None


class FeedbackQueued(BaseModel):
    feedback_id: str
    interaction_id: str
    status: str = "queued"


# --- request metrics ------------------------------------------------------------------------


class RequestMetrics:
    """Counts and times every response by the template of the route that answered (`/ask`),
    never the raw path, so a scan of made-up paths cannot grow the series (`unmatched`).

    A plain ASGI middleware rather than `prometheus-fastapi-instrumentator`: that one counts
    into the default in-process registry, which a multiprocess deployment cannot add up, and
    its `/metrics` would expose one process only. Outermost, so rate-limit refusals (429) and
    errors (500) are counted too."""

    def __init__(self, app: ASGIApp, metrics_dir: Path):
        self.app = app
        self.metrics_dir = metrics_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = status.HTTP_500_INTERNAL_SERVER_ERROR

        async def send_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.record_request(
                _route_template(scope),
                scope["method"],
                status_code,
                time.perf_counter() - started,
                directory=self.metrics_dir,
            )


def _route_template(scope: Scope) -> str | None:
    """The path template of the route a request was for, also when it was answered before
    routing (a rate-limit refusal); None when no route matches."""
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in scope["app"].routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    return getattr(route, "path", None)


# --- the app --------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    assistant_factory: AssistantFactory | None = None,
    api_keys: Mapping[str, str] | None = None,
    rate_limit: str | None = None,
    publish_timeout_s: float = 10.0,
    console: bool = True,
) -> FastAPI:
    """The API over one deployment's settings; keys and limit default to the settings'. With
    `console`, the ops console at `/ui` too."""
    keys = ApiKeys(api_keys if api_keys is not None else configured_keys(settings))
    limit = rate_limit or settings.api_rate_limit
    try:
        parse_limit(limit)
    except ValueError as exc:
        raise ValueError(f"rate limit {limit!r} is not like `30/minute`: {exc}") from exc
    services = Services(settings, assistant_factory or _open_assistant, publish_timeout_s)

    def limit_key(request: Request) -> str:
        name = keys.name_of(presented_key(request))
        return f"key:{name}" if name else f"anonymous:{get_remote_address(request)}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()
        metrics.retire()

    app = FastAPI(title="dagster-platform assistant", version=__version__, lifespan=lifespan)
    app.state.api_keys = keys
    app.state.limiter = Limiter(
        key_func=limit_key, application_limits=[limit], headers_enabled=True
    )
    app.add_middleware(SlowAPIASGIMiddleware)
    app.add_middleware(RequestMetrics, metrics_dir=settings.metrics_dir)
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    notify.install(settings.webhook_url)

    @app.get(METRICS_PATH, include_in_schema=False)
    @app.state.limiter.exempt
    def metrics_(request: Request) -> Response:
        """Prometheus exposition of every process recording into the metrics folder, in the
        format the scraper asks for (`Accept`), as prometheus_client's own exporter does."""
        body, content_type = metrics.exposition_for(
            request.headers.get("accept", ""), settings.metrics_dir
        )
        return Response(body, media_type=content_type)

    @app.post("/ask", response_model=AskResponse, dependencies=KEY_REQUIRED)
    def ask(body: AskRequest) -> Any:
        """Answer a question from the warehouse, the ontology and the knowledge base."""
        if not settings.warehouse_path.exists():
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"no warehouse at {settings.warehouse_path}: materialize the ingestion group",
            )
        assistant = services.open_assistant()
        started = time.perf_counter()
        try:
            answer = assistant.ask(body.question, body.session_id)
        except QuestionRejected as exc:
            return JSONResponse(
                {"detail": str(exc), "interaction_id": exc.interaction_id},
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        answered_in = time.perf_counter() - started
        record = answer.interaction
        metrics.record_answer(record.route, answered_in, directory=settings.metrics_dir)
        return AskResponse(
            interaction_id=record.interaction_id,
            session_id=record.session_id,
            answer=answer.text,
            route=record.route,
            status=record.status,
            proposed_actions=record.proposed_actions,
            model=record.model,
            adapter=record.adapter,
        )

    @app.post("/ask/feedback", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackQueued)
    def feedback(body: FeedbackRequest, who: Caller) -> FeedbackQueued:
        """Rate an answer (and correct it); it lands through the `llm-feedback` stream."""
        try:
            event = build_feedback(
                body.interaction_id,
                body.rating,
                correction=body.correction,
                comment=body.comment,
                user_id=who,
            )
        except InvalidFeedback as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        try:
            services.publisher().publish(event)
        except KafkaUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
        metrics.record_feedback(body.rating, directory=settings.metrics_dir)
        return FeedbackQueued(feedback_id=event.feedback_id, interaction_id=event.interaction_id)

    @app.get("/status", dependencies=KEY_REQUIRED)
    def status_() -> dict[str, Any]:
        """What serves, whether the broker answers, what the warehouse holds."""
        return {
            "version": __version__,
            "serving": _serving(services.assistant),
            "broker": _broker(settings),
            "warehouse": warehouse_status(
                settings.warehouse_path,
                counts={
                    "interactions": interactions.TABLE,
                    "feedback": FEEDBACK_EVENTS.tables[0].table,
                },
                wait_s=WAREHOUSE_WAIT_S,
            ),
        }

    if console:
        app.state.console_sessions = mount_console(app, services)
    return app


def _serving(assistant: Assistant | None) -> dict[str, Any]:
    if assistant is None:
        return {"state": "not loaded yet"}
    if assistant.llm is None:
        return {"state": "no LLM", "reason": assistant.llm_error or "opened without an LLM"}
    served = assistant.llm.client.served
    return {
        "state": "loaded",
        "backend": served.backend,
        "model": served.model,
        "adapter": None if served.adapter is None else served.adapter.name,
        "adapter_version": None if served.adapter is None else served.adapter.version,
        "label": served.label,
    }


def _broker(settings: Settings) -> dict[str, Any]:
    """The shared broker report, and whether feedback can be queued (its topic exists)."""
    info = broker_status(settings)
    if info["reachable"]:
        info["feedback_topic"] = FEEDBACK_EVENTS.topic in info["topics"]
    return info
