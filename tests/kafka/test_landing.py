"""Landing Kafka topics into DuckDB exactly once, against the real embedded broker."""

import contextlib
import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import msgspec
import pytest
from confluent_kafka import Message, Producer, TopicPartition

from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.consume import RangeFetch, consumer_for, plan_ranges
from dagster_platform.kafka.decode import Decoder
from dagster_platform.kafka.events import (
    ALERT_EVENTS,
    RAW_EVENTS,
    AlertV1,
    HostMetricV1,
    SparkJobEventV1,
    StreamFamily,
    encode,
)
from dagster_platform.kafka.landing import land_stream
from dagster_platform.kafka.tables import ensure_tables, read_offsets
from dagster_platform.kafka.topics import KafkaUnavailable, TopicSpec, ensure_topics
from dagster_platform.kafka.write import (
    BackgroundWriter,
    ConcurrentLanding,
    LandingAborted,
    write_batches,
)

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def metric(i: int, host: str = "etl-prod-worker-01") -> HostMetricV1:
    return HostMetricV1(
        event_id=f"m-{i}",
        ts=NOW,
        cluster_id="etl-prod",
        host_id=host,
        cpu_pct=50.0 + i % 40,
        memory_pct=60.0,
        disk_pct=70.0,
    )


def job(i: int) -> SparkJobEventV1:
    return SparkJobEventV1(
        event_id=f"j-{i}",
        ts=NOW,
        application_id=f"application_1_{i:04d}",
        cluster_id="etl-prod",
        name="daily_orders_etl",
        queue="root.etl.daily",
        user="svc_etl",
        state="RUNNING",
        vcores=8,
        memory_gb=32.0,
        cpu_share_pct=3.5,
    )


def alert_fields() -> dict:
    return {
        "event_id": "a-1",
        "ts": NOW,
        "alert_id": "al-1",
        "cluster_id": "etl-prod",
        "severity": "sev2",
        "rule": "cluster_cpu_high",
        "metric": "cpu_pct",
        "value": 91.2,
        "threshold": 85,
        "message": "CPU high",
    }


def alert() -> AlertV1:
    return AlertV1(**alert_fields())


@pytest.fixture
def family(kafka_broker: EmbeddedBroker) -> StreamFamily:
    """A fresh topic shaped like raw-data-stream, so tests never see each other's messages."""
    name = f"raw-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap_servers, (TopicSpec(name, 3, "test"),))
    return StreamFamily(name.replace("-", "_"), name, RAW_EVENTS.tables)


@pytest.fixture
def database(tmp_path: Path):
    path = str(tmp_path / "warehouse.duckdb")

    def connect() -> contextlib.closing[duckdb.DuckDBPyConnection]:
        return contextlib.closing(duckdb.connect(path))

    return connect


def produce(bootstrap: str, topic: str, values: list[bytes | None], key: bytes = b"k") -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def rows(connect, sql: str) -> list[tuple]:
    with connect() as conn:
        return conn.execute(sql).fetchall()


def count(connect, table: str) -> int:
    return rows(connect, f"SELECT count(*) FROM {table}")[0][0]


def assert_nothing_dropped(connect, family: StreamFamily) -> None:
    """landed + dead-lettered = consumed, per partition, and no coordinate twice."""
    tables = [t.table for t in family.tables] + ["dead_letter_events"]
    union = " UNION ALL ".join(
        f"SELECT kafka_partition, kafka_offset FROM {t} WHERE kafka_topic = '{family.topic}'"
        for t in tables
    )
    stored = rows(
        connect,
        f"SELECT kafka_partition, count(*), count(DISTINCT kafka_offset) FROM ({union}) GROUP BY 1",
    )
    offsets = rows(
        connect,
        "SELECT kafka_partition, messages_landed + messages_dead "
        f"FROM stream_offsets WHERE kafka_topic = '{family.topic}'",
    )
    assert {p: (n, n) for p, n in offsets} == {p: (n, d) for p, n, d in stored}


def test_valid_events_land_typed_with_their_coordinates(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    produce(
        kafka_broker.bootstrap_servers,
        family.topic,
        [encode(metric(i)) for i in range(200)] + [encode(job(i)) for i in range(30)],
    )
    report = land_stream(database, kafka_broker.bootstrap_servers, family)
    assert report.consumed == 230
    assert report.landed == {"host_metrics": 200, "spark_job_events": 30}
    assert report.dead_lettered == 0 and report.remaining_lag == 0
    assert sum(r.consumed for r in report.ranges) == 230
    (row,) = rows(
        database, "SELECT cpu_pct, ts, kafka_topic FROM host_metrics WHERE event_id = 'm-7'"
    )
    assert row[0] == 57.0 and row[1] == NOW and row[2] == family.topic
    assert_nothing_dropped(database, family)
    # the consumer group now knows how far the warehouse got
    consumer = consumer_for(family, kafka_broker.bootstrap_servers)
    committed = consumer.committed([TopicPartition(family.topic, p) for p in range(3)], timeout=10)
    consumer.close()
    with database() as conn:
        assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == read_offsets(
            conn, family
        )


BAD = {
    "malformed JSON": (b'{"type": "host_metric.v1", "event_id": ', "invalid_json", "truncated"),
    "wrong type": (
        encode(metric(1)).replace(b'"cpu_pct":51.0', b'"cpu_pct":"high"'),
        "schema",
        "Expected `float`, got `str` - at `$.cpu_pct`",
    ),
    "out of range": (
        encode(metric(1)).replace(b'"cpu_pct":51.0', b'"cpu_pct":180.0'),
        "schema",
        "<= 100.0 - at `$.cpu_pct`",
    ),
    "missing field": (
        encode(metric(1)).replace(b'"host_id":"etl-prod-worker-01",', b""),
        "schema",
        "missing required field `host_id`",
    ),
    "unknown type": (b'{"type": "disk_smart.v1", "event_id": "x"}', "unknown_type", "disk_smart"),
    "no type": (b'{"event_id": "x"}', "unknown_type", "missing required field `type`"),
    "other family's type": (
        encode(alert()),
        "unknown_type",
        "alert.v1",
    ),
    "not an object": (b"[1, 2, 3]", "schema", "Expected `object`, got `array`"),
    "empty": (None, "empty", "no value"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_messages_are_dead_lettered_with_their_reason(
    case: str, kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    payload, reason, detail = BAD[case]
    produce(
        kafka_broker.bootstrap_servers,
        family.topic,
        [encode(metric(0)), payload, encode(metric(2))],
    )
    report = land_stream(database, kafka_broker.bootstrap_servers, family)
    assert (report.consumed, report.landed_total, report.dead_lettered) == (3, 2, 1)
    assert report.reasons == {reason: 1}
    ((stored_reason, error, stored_payload, offset),) = rows(
        database, "SELECT reason, error, payload, kafka_offset FROM dead_letter_events"
    )
    assert stored_reason == reason and detail in error
    assert stored_payload == payload  # nothing is lost, not even the bad bytes
    assert offset >= 0
    assert_nothing_dropped(database, family)


UNUSUAL = {
    "pretty-printed": (msgspec.json.format(encode(metric(1)), indent=2), None),
    "padded with spaces": (b"  " + encode(metric(1)) + b" ", None),
    "trailing newline": (encode(metric(1)) + b"\n", None),
    "two events in one message": (encode(metric(1)) + encode(metric(2)), "invalid_json"),
    "two events on two lines": (encode(metric(1)) + b"\n" + encode(metric(2)), "invalid_json"),
    "half an event": (encode(metric(1))[:40], "invalid_json"),
    "just braces": (b"{}", "unknown_type"),
    "whitespace": (b"   ", "invalid_json"),
    "not UTF-8": (encode(metric(1)).replace(b"etl-prod", b"etl-\xff\xfe"), "invalid_json"),
}


@pytest.mark.parametrize("case", list(UNUSUAL))
def test_a_batch_decodes_as_its_messages_one_by_one(case: str) -> None:
    """The whole-batch fast path never joins, splits or shifts messages: one unusual message
    in a batch gives the same rows, at the same offsets, as decoding each message alone."""
    odd, reason = UNUSUAL[case]
    values = [encode(metric(0)), odd, encode(job(2)), encode(metric(3))]
    records = [
        Message(topic="t", partition=1, offset=10 + i, key=b"k", value=value)
        for i, value in enumerate(values)
    ]
    batch = Decoder(RAW_EVENTS).decode(records)
    landed = {
        table: dict(zip(t["kafka_offset"].to_pylist(), t["payload"].to_pylist(), strict=True))
        for table, t in batch.payloads.items()
    }
    expected_metrics = {10: values[0], 13: values[3]} | ({} if reason else {11: odd})
    assert {o: json.loads(p) for o, p in landed["host_metrics"].items()} == {
        o: json.loads(v) for o, v in expected_metrics.items()
    }
    assert list(landed["spark_job_events"]) == [12]
    assert dict(batch.reasons) == ({reason: 1} if reason else {})
    assert batch.dead_letters["kafka_offset"].to_pylist() == ([11] if reason else [])
    assert batch.next_offsets == {1: 14}


def test_a_clean_batch_is_decoded_whole_and_split_by_table() -> None:
    values = [encode(metric(i)) if i % 3 else encode(job(i)) for i in range(3000)]
    records = [
        Message(topic="t", partition=i % 3, offset=i // 3, value=value)
        for i, value in enumerate(values)
    ]
    batch = Decoder(RAW_EVENTS).decode(records)
    assert batch.payloads["host_metrics"].num_rows == 2000
    assert batch.payloads["spark_job_events"].num_rows == 1000
    jobs = batch.payloads["spark_job_events"]
    assert [json.loads(p)["event_id"] for p in jobs["payload"].to_pylist()[:2]] == ["j-0", "j-3"]
    assert jobs["kafka_partition"].to_pylist()[:2] == [0, 0]
    assert batch.landed_per_partition == {0: 1000, 1: 1000, 2: 1000}
    assert batch.next_offsets == {0: 1000, 1: 1000, 2: 1000}


def decoded(first: int, count: int, partition: int = 0) -> object:
    """A decoded batch of host metrics and Spark job events at offsets first.. of a partition."""
    values = [encode(metric(i)) if i % 4 else encode(job(i)) for i in range(first, first + count)]
    records = [
        Message(topic="t", partition=partition, offset=first + i, value=value)
        for i, value in enumerate(values)
    ]
    return Decoder(RAW_EVENTS).decode(records)


def test_the_background_writer_lands_every_table_in_one_transaction(database) -> None:
    with database() as conn:
        ensure_tables(conn, RAW_EVENTS)
    with BackgroundWriter(database, RAW_EVENTS, {}) as writer:
        for first in range(0, 1200, 400):
            writer.put(decoded(first, 400))
        written = writer.result()
    assert written.landed == {"host_metrics": 900, "spark_job_events": 300}
    assert written.next_offsets == written.now_at == {0: 1200}
    assert rows(database, "SELECT min(kafka_offset), max(kafka_offset) FROM host_metrics") == [
        (1, 1199)
    ]
    assert count(database, "spark_job_events") == 300
    assert_nothing_dropped(database, RAW_EVENTS)


def test_a_run_that_fails_while_decoding_writes_nothing(database) -> None:
    with database() as conn:
        ensure_tables(conn, RAW_EVENTS)
    writer = BackgroundWriter(database, RAW_EVENTS, {})
    with pytest.raises(ValueError, match="decoding broke"), writer:
        writer.put(decoded(0, 500))
        raise ValueError("decoding broke")
    # the writer rolled back and let the warehouse go: a new connection sees nothing
    assert count(database, "host_metrics") == count(database, "spark_job_events") == 0
    assert count(database, "stream_offsets") == 0


def test_the_writer_s_refusal_reaches_the_run(database) -> None:
    with database() as conn:
        ensure_tables(conn, RAW_EVENTS)
    writer = BackgroundWriter(database, RAW_EVENTS, {0: 700})  # the warehouse is not there
    with writer, pytest.raises(ConcurrentLanding, match="advanced since this run started"):
        writer.put(decoded(700, 100))
        writer.result()
    with pytest.raises(ConcurrentLanding):  # and once it is known, a put says so at once
        writer.put(decoded(800, 100))
    assert count(database, "host_metrics") == 0


def test_an_abandoned_writer_stops_its_stream(database) -> None:
    with database() as conn:
        ensure_tables(conn, RAW_EVENTS)
    writer = BackgroundWriter(database, RAW_EVENTS, {})
    with contextlib.suppress(KeyboardInterrupt), writer:
        writer.put(decoded(0, 300))
        raise KeyboardInterrupt
    with pytest.raises(LandingAborted, match="before every batch was decoded"):
        writer.result()
    assert count(database, "host_metrics") == 0


def test_an_oversized_message_is_dead_lettered_not_decoded(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    big = encode(metric(0)).replace(b'"event_id":"m-0"', b'"event_id":"' + b"x" * 200 + b'"')
    produce(kafka_broker.bootstrap_servers, family.topic, [big, encode(metric(1))])
    report = land_stream(database, kafka_broker.bootstrap_servers, family, max_message_bytes=300)
    assert report.reasons == {"oversized": 1}
    ((error, size),) = rows(database, "SELECT error, size_bytes FROM dead_letter_events")
    assert size == len(big) and f"{len(big)} bytes exceeds the limit of 300" in error


def test_an_empty_topic_lands_nothing_and_says_so(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    report = land_stream(database, kafka_broker.bootstrap_servers, family)
    assert (report.consumed, report.landed_total, report.dead_lettered) == (0, 0, 0)
    assert report.stopped_early is None and report.remaining_lag == 0
    assert count(database, "host_metrics") == 0


def test_batches_are_bounded_and_the_next_run_continues(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    produce(kafka_broker.bootstrap_servers, family.topic, [encode(metric(i)) for i in range(500)])
    first = land_stream(database, kafka_broker.bootstrap_servers, family, max_messages=200)
    assert first.consumed == 200 and first.remaining_lag == 300
    second = land_stream(database, kafka_broker.bootstrap_servers, family, max_messages=10_000)
    assert second.consumed == 300 and second.remaining_lag == 0
    assert count(database, "host_metrics") == 500
    assert_nothing_dropped(database, family)


def test_lost_offsets_resume_after_the_last_stored_message(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    produce(
        kafka_broker.bootstrap_servers,
        family.topic,
        [encode(metric(i)) for i in range(50)] + [b"not json"],
    )
    land_stream(database, kafka_broker.bootstrap_servers, family)
    with database() as conn:  # forget the progress, as a hand-edited warehouse would
        conn.execute("DELETE FROM stream_offsets")
    produce(
        kafka_broker.bootstrap_servers, family.topic, [encode(metric(i)) for i in range(50, 60)]
    )
    replay = land_stream(database, kafka_broker.bootstrap_servers, family)
    assert replay.consumed == 10 and replay.landed_total == 10
    assert count(database, "host_metrics") == 60
    assert rows(database, "SELECT count(DISTINCT event_id) FROM host_metrics")[0][0] == 60
    assert count(database, "dead_letter_events") == 1


def test_killed_after_the_warehouse_commit_before_the_kafka_commit(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    produce(kafka_broker.bootstrap_servers, family.topic, [encode(metric(i)) for i in range(40)])
    # the first run's steps, up to and including the DuckDB commit, and then it dies
    consumer = consumer_for(family, kafka_broker.bootstrap_servers)
    with database() as conn:
        ensure_tables(conn, family)
    planned = plan_ranges(consumer, family, {}, timeout=10)
    fetch = RangeFetch(consumer, family, planned, 1000, idle_timeout=10)
    batches = [Decoder(family).decode(records) for records in fetch]
    with database() as conn:
        write_batches(conn, family, {}, batches)
    consumer.close()  # no commit_to_group
    probe = consumer_for(family, kafka_broker.bootstrap_servers)
    before = probe.committed([TopicPartition(family.topic, p) for p in range(3)], timeout=10)
    assert all(tp.offset < 0 for tp in before)  # the group never heard of it
    # the next run starts where the warehouse says: nothing twice, and the group catches up
    report = land_stream(database, kafka_broker.bootstrap_servers, family)
    assert report.consumed == 0 and count(database, "host_metrics") == 40
    after = probe.committed([TopicPartition(family.topic, p) for p in range(3)], timeout=10)
    probe.close()
    with database() as conn:
        assert {tp.partition: tp.offset for tp in after if tp.offset >= 0} == read_offsets(
            conn, family
        )
    assert_nothing_dropped(database, family)


def test_a_run_overtaken_by_another_writes_nothing(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    produce(kafka_broker.bootstrap_servers, family.topic, [encode(metric(i)) for i in range(30)])
    consumer = consumer_for(family, kafka_broker.bootstrap_servers)
    with database() as conn:
        ensure_tables(conn, family)
        start = read_offsets(conn, family)
    planned = plan_ranges(consumer, family, start, timeout=10)
    batches = [Decoder(family).decode(r) for r in RangeFetch(consumer, family, planned, 1000, 10)]
    consumer.close()
    land_stream(database, kafka_broker.bootstrap_servers, family)  # overtakes the slow run
    with database() as conn, pytest.raises(ConcurrentLanding, match="advanced since this run"):
        write_batches(conn, family, start, batches)
    assert count(database, "host_metrics") == 30
    assert_nothing_dropped(database, family)


def test_two_runs_at_once_land_each_message_once(
    kafka_broker: EmbeddedBroker, family: StreamFamily, database
) -> None:
    produce(kafka_broker.bootstrap_servers, family.topic, [encode(metric(i)) for i in range(3000)])
    results, errors = [], []

    def run() -> None:
        try:
            results.append(land_stream(database, kafka_broker.bootstrap_servers, family))
        except Exception as exc:  # a losing writer may be refused; it must not corrupt
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results, errors
    for error in errors:
        assert isinstance(error, ConcurrentLanding) or any(
            word in str(error) for word in ("onflict", "lock", "constraint violation")
        )
    land_stream(database, kafka_broker.bootstrap_servers, family)  # whatever is left
    assert count(database, "host_metrics") == 3000
    assert rows(database, "SELECT count(DISTINCT event_id) FROM host_metrics")[0][0] == 3000
    assert_nothing_dropped(database, family)


def test_alerts_land_in_their_own_table(kafka_broker: EmbeddedBroker, database) -> None:
    alert = AlertV1(**{**alert_fields(), "event_id": f"a-{uuid.uuid4().hex}"})
    produce(kafka_broker.bootstrap_servers, ALERT_EVENTS.topic, [encode(alert)])
    report = land_stream(database, kafka_broker.bootstrap_servers, ALERT_EVENTS)
    assert report.landed["alert_events"] >= 1
    assert rows(database, f"SELECT value FROM alert_events WHERE event_id = '{alert.event_id}'")


def test_broker_stopped_before_a_run(private_broker: EmbeddedBroker, database) -> None:
    private_broker.stop()
    with pytest.raises(KafkaUnavailable, match="did not answer"):
        land_stream(database, private_broker.bootstrap_servers, RAW_EVENTS, timeout=2)
    assert count(database, "host_metrics") == 0  # tables exist, nothing half-written


def test_broker_stopped_during_a_run(private_broker: EmbeddedBroker, database) -> None:
    produce(
        private_broker.bootstrap_servers,
        RAW_EVENTS.topic,
        [encode(metric(i)) for i in range(60_000)],
    )
    threading.Timer(0.3, private_broker.stop).start()
    try:
        report = land_stream(database, private_broker.bootstrap_servers, RAW_EVENTS, timeout=3)
    except KafkaUnavailable:
        assert count(database, "host_metrics") == 0
        return
    landed = count(database, "host_metrics")
    assert landed == report.consumed == report.landed_total
    assert rows(database, "SELECT count(DISTINCT event_id) FROM host_metrics")[0][0] == landed
    assert_nothing_dropped(database, RAW_EVENTS)
    if report.consumed < 60_000:
        assert report.stopped_early or report.kafka_commit_error
