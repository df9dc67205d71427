"""Proposals and outcomes posted to a webhook: the Slack body, and a webhook that times out or
answers 500 never holds up an approval — the failure is logged and retried."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from dagster_platform.console.notify import WebhookNotifier, install, message
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.topics import PLATFORM_TOPICS, ensure_topics
from dagster_platform.ontology.actions import ActionStatus, approve, propose, reject
from dagster_platform.ontology.loader import load_ontology
from dagster_platform.ontology.roles import load_roles
from tests.support.state import ONTOLOGY_DIR, ROLES_FILE

TOP_JOB = "application_1794712500000_0488"
NEXT_JOB = "application_1794712500000_0494"


class Webhook:
    """A local incoming webhook: answers each request as the next of `script` says (`ok`,
    `500`, or `slow`: past the client's timeout), then `ok`; records what it was sent."""

    def __init__(self, script: list[str], slow_s: float = 1.5):
        self.script = list(script)
        self.slow_s = slow_s
        self.received: list[dict] = []
        self.answered: list[str] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                how = webhook.script.pop(0) if webhook.script else "ok"
                webhook.answered.append(how)
                if how == "slow":
                    time.sleep(webhook.slow_s)
                code = 500 if how == "500" else 200
                if how == "ok":
                    webhook.received.append(body)
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"boom")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def conn(sample_warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect(str(sample_warehouse)) as connection:
        yield connection


@pytest.fixture(scope="module")
def servers(kafka_broker: EmbeddedBroker) -> str:
    ensure_topics(kafka_broker.bootstrap_servers, PLATFORM_TOPICS)
    return kafka_broker.bootstrap_servers


def _status(step: str, detail: str | None = None) -> ActionStatus:
    now = datetime(2026, 11, 20, 9, 5, tzinfo=UTC)
    return ActionStatus(
        "act-0123456789ab", "kill_spark_job", "spark_job", TOP_JOB, {"reason": "runaway"},
        step, "bob", now, "CPU <95%> & rising", "alice", now, detail, step == "failed",
    )  # fmt: skip


def test_the_body_is_slack_shaped_and_data_never_becomes_markup() -> None:
    proposed = message(_status("proposed"))
    assert proposed["text"].startswith("New proposal awaiting approval: kill_spark_job on ")
    assert "&lt;95%&gt; &amp; rising" in proposed["text"] and "<95%>" not in json.dumps(proposed)
    assert [b["type"] for b in proposed["blocks"]] == ["section", "section", "context"]
    failed = message(_status("failed", "Kafka at 127.0.0.1:1 did not take the command"))
    fields = [f["text"] for f in failed["blocks"][1]["fields"]]
    assert any(f.startswith("*Outcome*\nKafka at") for f in fields)
    assert any("actions retry act-0123456789ab --by USER" in f for f in fields)
    assert "failed by alice" in failed["blocks"][2]["elements"][0]["text"]


def test_no_url_no_notifier() -> None:
    assert install(None) is None and install("") is None


@pytest.mark.parametrize(
    ("script", "delivered"),
    [(["slow", "500"], True), (["500"] * 9, False)],
    ids=["times-out-then-500-then-ok", "always-500"],
)
def test_a_failing_webhook_never_holds_up_the_approval(
    conn: duckdb.DuckDBPyConnection,
    servers: str,
    caplog: pytest.LogCaptureFixture,
    script: list[str],
    delivered: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="dagster_platform.console.notify")
    webhook = Webhook(script)
    notifier = WebhookNotifier(webhook.url, timeout_s=0.5, attempts=3, backoff_s=0.05)
    loaded, roles = load_ontology(ONTOLOGY_DIR), load_roles(ROLES_FILE)
    try:
        action_id = propose(conn, loaded, "kill_spark_job", TOP_JOB, {"reason": "r"}, "bob", "hot")
        started = time.perf_counter()
        done = approve(conn, loaded, roles, action_id, "alice", bootstrap_servers=servers)
        took = time.perf_counter() - started
        other = propose(conn, loaded, "kill_spark_job", NEXT_JOB, {"reason": "r"}, "bob", "hot")
        reject(conn, loaded, roles, other, "alice", "not this one")
        received = webhook.wait_for(4 if delivered else 0, timeout=20)
    finally:
        notifier.close()
        webhook.close()
    assert done.status == "executed"
    assert took < webhook.slow_s  # the webhook's wait was never the approver's
    records = [r for r in caplog.records if r.name == "dagster_platform.console.notify"]
    retried = [r for r in records if r.getMessage() == "webhook post failed; retrying"]
    assert retried and all(r.action_id == action_id for r in retried[:1])
    assert all(webhook.url not in r.getMessage() + str(r.__dict__) for r in records)
    if delivered:
        assert "ReadTimeout" in retried[0].error and "HTTP 500" in retried[1].error
        assert [b["text"].split(":")[0] for b in received] == [
            "New proposal awaiting approval",
            "Executed",
            "New proposal awaiting approval",
            "Rejected",
        ]
        assert action_id in json.dumps(received[1])
    else:
        assert [r.getMessage() for r in records].count("webhook post given up") >= 1
        assert webhook.answered[:3] == ["500", "500", "500"]
