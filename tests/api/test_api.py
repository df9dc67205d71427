"""The HTTP API over the real assistant (no LLM) on the sample warehouse and the real broker:
keys, the rate limit, asking, rating, and what /status tells."""

from __future__ import annotations

import contextlib
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dagster_platform.agents import interactions
from dagster_platform.agents.assistant import Answer, Assistant
from dagster_platform.api.app import (
    configured_keys,
    create_app,
    create_local_key,
    key_file,
    parse_api_keys,
)
from dagster_platform.cli.feedback import serve
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.kafka.landing import land_stream
from dagster_platform.settings import Settings
from tests.support.api import ALICE, KEYS, QUESTION, no_llm
from tests.support.state import live_settings, load_sample_warehouse


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, kafka_broker: EmbeddedBroker) -> Settings:
    live = live_settings(tmp_path_factory.mktemp("api") / "state")
    load_sample_warehouse(live.warehouse_path)
    return live.model_copy(update={"kafka_bootstrap_servers": kafka_broker.bootstrap_servers})


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """One app for the module: the assistant opens once, on the first question."""
    app = create_app(settings, assistant_factory=no_llm, api_keys=KEYS, rate_limit="1000/minute")
    with TestClient(app) as test_client:
        yield test_client


def count(settings: Settings, table: str) -> int:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "not-a-key-of-this-app"},
        {"Authorization": f"Basic {KEYS['alice']}"},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.models
def test_a_missing_or_wrong_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path, body in [
        ("GET", "/status", None),
        ("POST", "/ask", {"question": QUESTION}),
        ("POST", "/ask/feedback", {"interaction_id": "ia-1", "rating": "up"}),
    ]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "API key is required" in response.json()["detail"]


@pytest.mark.models
def test_a_bearer_token_is_a_key_too(client: TestClient) -> None:
    response = client.get("/status", headers={"Authorization": f"Bearer {KEYS['bob']}"})
    assert response.status_code == 200


@pytest.mark.models
def test_the_rate_limit_is_per_key_and_says_when_to_retry(settings: Settings) -> None:
    app = create_app(settings, assistant_factory=no_llm, api_keys=KEYS, rate_limit="2/minute")
    with TestClient(app) as limited:
        assert [limited.get("/status", headers=ALICE).status_code for _ in range(2)] == [200, 200]
        refused = limited.get("/status", headers=ALICE)
        other = limited.get("/status", headers={"X-API-Key": KEYS["bob"]})
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert "2 per 1 minute" in refused.text
    assert other.status_code == 200  # bob has a budget of his own


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "item 1 is not `name:key`"),
        ("alice:tiny9", "item 1 (alice): the key is shorter than 16"),
        (f"a:{KEYS['alice']},:{KEYS['bob']}", "item 2 is not `name:key`"),
        (f"a:{KEYS['alice']},a:{KEYS['bob']}", "item 2 (a): the name or the key is given twice"),
    ],
)
def test_bad_key_settings_are_named_without_the_key(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"DAGSTER_PLATFORM_API_KEYS ") as caught:
        parse_api_keys(text)
    assert message in str(caught.value)
    assert KEYS["alice"] not in str(caught.value) and "tiny9" not in str(caught.value)


@pytest.mark.models
def test_keys_come_from_the_settings(settings: Settings) -> None:
    configured = settings.model_copy(
        update={"api_keys": f"ci:{KEYS['alice']}, ops : {KEYS['bob']}"}
    )
    assert configured_keys(configured) == {"ci": KEYS["alice"], "ops": KEYS["bob"]}
    assert KEYS["alice"] not in repr(configured)
    with pytest.raises(ValueError, match="no API key configured"):
        create_app(settings, api_keys={})
    with pytest.raises(ValueError, match="rate limit 'lots' is not like `30/minute`"):
        create_app(settings, api_keys=KEYS, rate_limit="lots")


def test_serve_makes_a_private_key_once_and_the_app_takes_it(
    state_dir: Path, kafka_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.delenv("DAGSTER_PLATFORM_API_KEYS", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    served: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **where: served.append((app, where)))
    cli = typer.Typer()
    cli.command()(serve)

    first = CliRunner().invoke(cli, ["--port", "8123"])
    second = CliRunner().invoke(cli, [])

    path = key_file(Settings(state_dir=state_dir))
    key = path.read_text().strip()
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert f"created an API key in {path}" in first.output and "created" not in second.output
    assert key not in first.output + second.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) >= 32
    assert served[0][1] == {"host": "127.0.0.1", "port": 8123}
    with TestClient(served[1][0]) as local:
        assert local.get("/status", headers={"X-API-Key": key}).status_code == 200
    with pytest.raises(FileExistsError):
        create_local_key(Settings(state_dir=state_dir))  # never overwrites a key


# --- asking and rating ------------------------------------------------------------------------


@pytest.mark.models
def test_status_before_the_first_question(settings: Settings) -> None:
    app = create_app(settings, assistant_factory=no_llm, api_keys=KEYS)
    with TestClient(app) as fresh:
        response = fresh.get("/status", headers=ALICE)
    body = response.json()
    assert response.status_code == 200
    assert body["serving"] == {"state": "not loaded yet"}
    assert body["broker"]["reachable"] is True and body["broker"]["feedback_topic"] is True
    assert body["warehouse"]["path"] == str(settings.warehouse_path)
    assert body["warehouse"]["state"] == "ready" and body["version"]
    assert all(key not in response.text for key in KEYS.values())


@pytest.mark.models
def test_ask_then_rate_and_the_rating_lands(client: TestClient, settings: Settings) -> None:
    asked = client.post("/ask", json={"question": QUESTION, "session_id": "api-1"}, headers=ALICE)
    assert asked.status_code == 200, asked.text
    answer = asked.json()
    assert answer["session_id"] == "api-1" and answer["route"] == "data"
    assert answer["status"] == "answered" and "application_" in answer["answer"]
    assert answer["model"] is None and answer["proposed_actions"] == []
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        [logged] = interactions.read(conn, interaction_id=answer["interaction_id"])
    assert logged.question == QUESTION

    rated = client.post(
        "/ask/feedback",
        json={
            "interaction_id": answer["interaction_id"],
            "rating": "down",
            "correction": "Top three by CPU share, with their queues.",
        },
        headers=ALICE,
    )
    assert rated.status_code == 202, rated.text
    queued = rated.json()
    assert queued["status"] == "queued" and queued["interaction_id"] == answer["interaction_id"]

    connect = lambda: contextlib.closing(duckdb.connect(str(settings.warehouse_path)))  # noqa: E731
    land_stream(connect, settings.bootstrap_servers, FEEDBACK_EVENTS, timeout=5)
    with connect() as conn:
        row = conn.execute(
            "SELECT interaction_id, rating, correction, user_id FROM feedback_events "
            "WHERE feedback_id = ?",
            [queued["feedback_id"]],
        ).fetchone()
    assert row == (
        answer["interaction_id"],
        -1,
        "Top three by CPU share, with their queues.",
        "alice",  # the key's name, never the key
    )

    status = client.get("/status", headers=ALICE).json()
    assert status["serving"] == {"state": "no LLM", "reason": "opened without an LLM"}
    assert status["warehouse"]["interactions"] == count(settings, "interactions") >= 1
    assert status["warehouse"]["feedback"] == count(settings, "feedback_events") >= 1


@pytest.mark.models
def test_questions_are_answered_side_by_side_and_all_recorded(settings: Settings) -> None:
    """Every question is inside the real assistant's `ask` at once (none goes on before all
    are in: one-at-a-time answering would break the barrier), then all read and write the
    warehouse together, and each answer is recorded."""
    asking = 4
    all_in = threading.Barrier(asking, timeout=60)

    def side_by_side(settings: Settings) -> Assistant:
        assistant = no_llm(settings)
        real_ask = assistant.ask

        def ask(question: str, session_id: str | None = None) -> Answer:
            all_in.wait()
            return real_ask(question, session_id)

        assistant.ask = ask
        return assistant

    app = create_app(
        settings, assistant_factory=side_by_side, api_keys=KEYS, rate_limit="1000/minute"
    )
    with TestClient(app) as concurrent, ThreadPoolExecutor(asking) as pool:
        responses = list(
            pool.map(
                lambda n: concurrent.post(
                    "/ask", json={"question": QUESTION, "session_id": f"side-{n}"}, headers=ALICE
                ),
                range(asking),
            )
        )
    assert [r.status_code for r in responses] == [200] * asking, [r.text for r in responses]
    answers = [r.json() for r in responses]
    assert {a["session_id"] for a in answers} == {f"side-{n}" for n in range(asking)}
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        logged = [interactions.read(conn, interaction_id=a["interaction_id"]) for a in answers]
    assert [(i.session_id, i.status) for [i] in logged] == [
        (a["session_id"], "answered") for a in answers
    ]


@pytest.mark.models
def test_a_rejected_question_is_422_and_logged(client: TestClient, settings: Settings) -> None:
    response = client.post("/ask", json={"question": "   "}, headers=ALICE)
    assert response.status_code == 422
    body = response.json()
    assert "empty" in body["detail"]
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        [logged] = interactions.read(conn, interaction_id=body["interaction_id"])
    assert logged.status == "rejected"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"interaction_id": "ia-1", "rating": "sideways"}, "'up' or 'down'"),
        ({"interaction_id": "ia-1", "rating": "down", "correction": "  "}, "correction is blank"),
        ({"interaction_id": "ia-1", "rating": "down", "correction": "x" * 4001}, "4001 characters"),
        ({"interaction_id": " ", "rating": "up"}, "interaction id is empty"),
        ({"rating": "up"}, "interaction_id"),
    ],
)
@pytest.mark.models
def test_bad_feedback_is_422(client: TestClient, body: dict, message: str) -> None:
    response = client.post("/ask/feedback", json=body, headers=ALICE)
    assert response.status_code == 422
    assert message in response.text


@pytest.mark.models
def test_feedback_with_the_broker_down_is_503(settings: Settings) -> None:
    down = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    app = create_app(down, assistant_factory=no_llm, api_keys=KEYS, publish_timeout_s=1)
    with TestClient(app) as offline:
        response = offline.post(
            "/ask/feedback", json={"interaction_id": "ia-1", "rating": "up"}, headers=ALICE
        )
        status = offline.get("/status", headers=ALICE).json()
    assert response.status_code == 503
    assert "did not take the feedback" in response.json()["detail"]
    assert status["broker"]["reachable"] is False and "did not answer" in status["broker"]["error"]
