"""Feedback in: validated, published to a real broker, landed exactly once, and dead-lettered
when it names an interaction the warehouse does not hold."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import msgspec
import pytest
import typer
from confluent_kafka import Producer
from typer.testing import CliRunner

from dagster_platform.agents import interactions
from dagster_platform.agents.interactions import Interaction
from dagster_platform.cli.feedback import feedback
from dagster_platform.finetune.feedback import (
    MAX_COMMENT_CHARS,
    MAX_CORRECTION_CHARS,
    InvalidFeedback,
    build_feedback,
    parse_rating,
    publish_feedback,
)
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import FEEDBACK_EVENTS, StreamFamily
from dagster_platform.kafka.landing import land_stream
from dagster_platform.kafka.tables import DEAD_LETTER_TABLE, ensure_tables, unreconciled
from dagster_platform.kafka.topics import KafkaUnavailable, TopicSpec, ensure_topics

Connect = Callable[[], contextlib.closing[duckdb.DuckDBPyConnection]]


@pytest.fixture
def family(kafka_broker: EmbeddedBroker) -> StreamFamily:
    """A private topic shaped like llm-feedback (3 partitions, so counts are per partition)."""
    name = f"feedback-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap_servers, (TopicSpec(name, 3, "test"),))
    return StreamFamily(name.replace("-", "_"), name, FEEDBACK_EVENTS.tables)


@pytest.fixture
def database(tmp_path: Path) -> Connect:
    path = str(tmp_path / "warehouse.duckdb")

    def connect() -> contextlib.closing[duckdb.DuckDBPyConnection]:
        return contextlib.closing(duckdb.connect(path))

    return connect


def answered(connect: Connect, *ids: str) -> None:
    with connect() as conn:
        for interaction_id in ids:
            interactions.record(conn, Interaction(interaction_id, "s-1", "why?", "answered"))


# --- validation ---------------------------------------------------------------------------


def test_ratings_parse_and_the_event_is_built() -> None:
    assert (parse_rating("up"), parse_rating(" DOWN ")) == (1, -1)
    event = build_feedback(
        " ia-1 ", "down", correction="  Kill the backfill first.  ", comment=" ", user_id="kim"
    )
    assert re.fullmatch(r"fb-[0-9a-f]{12}", event.feedback_id)
    assert event.interaction_id == "ia-1" and event.rating == -1
    assert event.correction == "Kill the backfill first." and event.comment is None
    assert event.user_id == "kim" and event.ts.tzinfo is not None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rating": "sideways"}, "rating must be 'up' or 'down', not 'sideways'"),
        ({"rating": ""}, "rating must be 'up' or 'down'"),
        ({"rating": "1"}, "rating must be 'up' or 'down'"),
        ({"interaction_id": "  "}, "interaction id is empty"),
        ({"interaction_id": "i" * 257}, "257 characters long; the limit is 256"),
        ({"correction": " \n "}, "correction is blank"),
        ({"correction": "x" * (MAX_CORRECTION_CHARS + 1)}, "4001 characters long"),
        ({"comment": "x" * (MAX_COMMENT_CHARS + 1)}, "comment is 2001 characters long"),
    ],
)
def test_bad_feedback_is_refused_with_the_reason(arguments: dict, message: str) -> None:
    given = {"interaction_id": "ia-1", "rating": "up", **arguments}
    with pytest.raises(InvalidFeedback, match=re.escape(message)):
        build_feedback(given.pop("interaction_id"), given.pop("rating"), **given)
    assert issubclass(InvalidFeedback, ValueError)


# --- landing --------------------------------------------------------------------------------


def test_feedback_lands_and_unknown_interactions_are_dead_lettered(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database: Connect
) -> None:
    answered(database, *(f"ia-known-{i}" for i in range(6)))
    sent = [
        publish_feedback(
            kafka_broker.bootstrap_servers,
            f"ia-known-{i}",
            "down" if i % 2 else "up",
            correction=f"The answer for {i}." if i % 2 else None,
            user_id="kim",
            topic=family.topic,
        )
        for i in range(6)
    ]
    for i in range(4):
        publish_feedback(kafka_broker.bootstrap_servers, f"ia-ghost-{i}", "up", topic=family.topic)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(family.topic, key=b"k", value=b'{"type": "feedback.v1", "rating": 5}')
    assert producer.flush(10) == 0

    report = land_stream(database, kafka_broker.bootstrap_servers, family, timeout=5)

    assert report.consumed == 11
    assert report.landed == {"feedback_events": 6}
    assert report.dead_lettered == 5
    assert report.reasons == {"unknown_interaction": 4, "schema": 1}
    with database() as conn:
        assert unreconciled(conn, family) == []  # per partition: landed + dead = consumed
        offsets = conn.execute(
            "SELECT sum(messages_landed), sum(messages_dead) FROM stream_offsets "
            "WHERE kafka_topic = ?",
            [family.topic],
        ).fetchone()
        landed = conn.execute(
            "SELECT feedback_id, interaction_id, rating, correction, user_id FROM feedback_events "
            "ORDER BY interaction_id"
        ).fetchall()
        dead = conn.execute(
            f"SELECT kafka_partition, reason, error, payload FROM {DEAD_LETTER_TABLE} "
            "WHERE reason = 'unknown_interaction' ORDER BY error"
        ).fetchall()
    assert offsets == (6, 5)
    assert landed == [
        (e.feedback_id, e.interaction_id, e.rating, e.correction, "kim")
        for e in sorted(sent, key=lambda e: e.interaction_id)
    ]
    assert landed[1][3] == "The answer for 1." and landed[0][3] is None
    assert [row[2] for row in dead] == [
        f"interaction_id 'ia-ghost-{i}': not found in interactions" for i in range(4)
    ]
    assert msgspec.json.decode(dead[0][3])["interaction_id"] == "ia-ghost-0"  # kept whole

    again = land_stream(database, kafka_broker.bootstrap_servers, family, timeout=5)
    assert again.consumed == 0  # exactly once


def test_feedback_before_any_interaction_table_is_dead_lettered(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database: Connect
) -> None:
    publish_feedback(kafka_broker.bootstrap_servers, "ia-early", "up", topic=family.topic)
    report = land_stream(database, kafka_broker.bootstrap_servers, family, timeout=5)
    assert (report.landed, report.reasons) == ({"feedback_events": 0}, {"unknown_interaction": 1})
    with database() as conn:
        [(error,)] = conn.execute(f"SELECT error FROM {DEAD_LETTER_TABLE}").fetchall()
        assert unreconciled(conn, family) == []
    assert error == "interaction_id 'ia-early': no interactions table yet"


def test_a_warehouse_from_before_the_correction_column_gains_it(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database: Connect
) -> None:
    with database() as conn:  # the table as the first release created it
        conn.execute(
            "CREATE TABLE feedback_events (kafka_topic VARCHAR NOT NULL, "
            "kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL, event_id VARCHAR, "
            "ts TIMESTAMPTZ, feedback_id VARCHAR, interaction_id VARCHAR, rating BIGINT, "
            "comment VARCHAR, user_id VARCHAR, "
            "landed_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
        )
        conn.execute(
            "INSERT INTO feedback_events (kafka_topic, kafka_partition, kafka_offset, "
            "feedback_id, interaction_id, rating) VALUES ('old', 0, 0, 'fb-old', 'ia-1', 1)"
        )
    answered(database, "ia-1")
    old_message = {  # a v1 message of a producer that predates `correction`
        "type": "feedback.v1",
        "event_id": "e-old",
        "ts": datetime.now(UTC).isoformat(),
        "feedback_id": "fb-older-producer",
        "interaction_id": "ia-1",
        "rating": 1,
    }
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(family.topic, key=b"ia-1", value=msgspec.json.encode(old_message))
    assert producer.flush(10) == 0
    new = publish_feedback(
        kafka_broker.bootstrap_servers, "ia-1", "down", correction="Better.", topic=family.topic
    )

    report = land_stream(database, kafka_broker.bootstrap_servers, family, timeout=5)

    assert report.landed == {"feedback_events": 2} and report.dead_lettered == 0
    with database() as conn:
        rows = conn.execute(
            "SELECT feedback_id, correction FROM feedback_events ORDER BY feedback_id"
        ).fetchall()
        ensure_tables(conn, family)  # idempotent once the column is there
    assert sorted(rows) == sorted(
        [("fb-old", None), ("fb-older-producer", None), (new.feedback_id, "Better.")]
    )


def test_an_unreachable_broker_is_reported() -> None:
    with pytest.raises(KafkaUnavailable, match="did not take the feedback"):
        publish_feedback(f"127.0.0.1:{free_port()}", "ia-1", "up", timeout_s=1)


# --- the command --------------------------------------------------------------------------


@pytest.fixture
def cli(state_dir: Path) -> typer.Typer:
    app = typer.Typer()
    app.command()(feedback)
    return app


def test_the_command_publishes_and_prints_the_id(
    cli: typer.Typer,
    kafka_broker: EmbeddedBroker,
    database: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    answered(database, "ia-cli")
    result = CliRunner().invoke(
        cli, ["ia-cli", "--rating", "down", "--correction", "Use yarn kill.", "--user", "kim"]
    )
    assert result.exit_code == 0, result.output
    feedback_id = result.stdout.strip()
    assert re.fullmatch(r"fb-[0-9a-f]{12}", feedback_id)
    land_stream(database, kafka_broker.bootstrap_servers, FEEDBACK_EVENTS, timeout=5)
    with database() as conn:
        row = conn.execute(
            "SELECT interaction_id, rating, correction, user_id FROM feedback_events "
            "WHERE feedback_id = ?",
            [feedback_id],
        ).fetchone()
    assert row == ("ia-cli", -1, "Use yarn kill.", "kim")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ia-1", "--rating", "meh"], "rating must be 'up' or 'down'"),
        (["ia-1", "--rating", "down", "--correction", "  "], "correction is blank"),
        (["ia-1", "--rating", "down", "--correction", "x" * 4001], "4001 characters long"),
    ],
)
def test_the_command_refuses_bad_input(
    cli: typer.Typer, arguments: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2 and message in result.output


def test_the_command_says_when_the_broker_is_down(
    cli: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(cli, ["ia-1", "--rating", "up", "--timeout", "1"])
    assert result.exit_code == 1
    assert "did not take the feedback" in result.output and "nothing was sent" in result.output
