"""Exactly-once landing of a topic into DuckDB (decision 1 of the design).

A run reads where the warehouse says it stopped, consumes a bounded batch, writes the rows
with their (topic, partition, offset) and the new offsets in one DuckDB transaction, and only
then commits the offsets to the Kafka consumer group, so that sensors can see the backlog
without opening DuckDB. Rows are keyed by their coordinates: a replay inserts nothing twice,
and a run that dies at any point leaves the next one to start where the warehouse says.

Bad messages are data: every message that is empty, oversized, not JSON, of an unknown type or
against its schema goes to the dead-letter table with the reason; landed + dead-lettered equals
consumed.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.tables import (
    DEAD_LETTER_TABLE,
    advance_offsets,
    ensure_tables,
    event_arrow_schema,
    insert_ignoring_duplicates,
    read_offsets,
)
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.logs import get_logger

log = get_logger(__name__)

DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
FETCH_BATCH = 10_000

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


@dataclass
class DecodedBatch:
    """Landing rows per table (as Arrow) and the dead letters, for one batch of messages."""

    tables: dict[str, pa.Table]
    dead_letters: pa.Table
    reasons: Counter[str]


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    first: int  # first offset consumed
    next: int  # the offset after the last one consumed
    high_watermark: int

    @property
    def consumed(self) -> int:
        return self.next - self.first


@dataclass
class LandingReport:
    family: str
    topic: str
    consumed: int = 0
    landed: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    duplicates_ignored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ranges: list[PartitionRange] = field(default_factory=list)
    remaining_lag: int = 0
    kafka_commit_error: str | None = None
    stopped_early: str | None = None

    @property
    def landed_total(self) -> int:
        return sum(self.landed.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "topic": self.topic,
            "consumed": self.consumed,
            "landed": self.landed,
            "dead_lettered": self.dead_lettered,
            "duplicates_ignored": self.duplicates_ignored,
            "dead_letter_reasons": self.reasons,
            "offset_ranges": {
                str(r.partition): [r.first, r.next] for r in self.ranges if r.consumed
            },
            "remaining_lag": self.remaining_lag,
            "kafka_commit_error": self.kafka_commit_error,
            "stopped_early": self.stopped_early,
        }


# --- decoding -----------------------------------------------------------------------------

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("kafka_topic", pa.string()),
        pa.field("kafka_partition", pa.int32()),
        pa.field("kafka_offset", pa.int64()),
        pa.field("kafka_key", pa.binary()),
        pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("payload", pa.binary()),
    ]
)


def _classify(error: msgspec.MsgspecError) -> str:
    text = str(error)
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        return "invalid_json"
    if "at `$.type`" in text or "missing required field `type`" in text:
        return "unknown_type"
    return "schema"


class Decoder:
    """Decodes and validates the messages of one topic family in one pass."""

    def __init__(self, family: StreamFamily, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.family = family
        self.max_message_bytes = max_message_bytes
        union = family.event_types[0]
        for event_type in family.event_types[1:]:
            union = union | event_type  # type: ignore[assignment]
        self._decoder = msgspec.json.Decoder(union)
        self._table_of = {t.event_type: t for t in family.tables}
        self._schemas = {t.table: event_arrow_schema(t) for t in family.tables}

    def decode(self, messages: list[Message]) -> DecodedBatch:
        rows: dict[str, list[tuple]] = defaultdict(list)
        dead: list[tuple] = []
        reasons: Counter[str] = Counter()
        topic = self.family.topic
        astuple = msgspec.structs.astuple
        for message in messages:
            value = message.value
            size = len(value) if value else 0
            if not value:
                reason, error = "empty", "message has no value"
            elif size > self.max_message_bytes:
                reason = "oversized"
                error = f"{size} bytes exceeds the limit of {self.max_message_bytes}"
            else:
                try:
                    event = self._decoder.decode(value)
                except msgspec.MsgspecError as exc:
                    reason, error = _classify(exc), str(exc)
                else:
                    table = self._table_of[type(event)].table
                    rows[table].append((topic, message.partition, message.offset, *astuple(event)))
                    continue
            reasons[reason] += 1
            dead.append(
                (topic, message.partition, message.offset, message.key, message.timestamp_ms,
                 reason, error, size, value)
            )  # fmt: skip
        tables = {
            name: _rows_to_arrow(rows.get(name, []), schema)
            for name, schema in self._schemas.items()
        }
        return DecodedBatch(tables, _rows_to_arrow(dead, DEAD_LETTER_SCHEMA), reasons)


def _rows_to_arrow(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.table(
        [pa.array(column, type=f.type) for column, f in zip(columns, schema, strict=True)],
        schema=schema,
    )


# --- consuming ------------------------------------------------------------------------------


def consumer_for(family: StreamFamily, bootstrap_servers: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": family.consumer_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "socket.timeout.ms": 10_000,
            "log_level": 0,
        }
    )


def plan_ranges(
    consumer: Consumer, family: StreamFamily, start: dict[int, int], timeout: float
) -> list[PartitionRange]:
    """Per partition: from the warehouse's offset (or the log start) to the high watermark."""
    try:
        metadata = consumer.list_topics(family.topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka did not answer for topic {family.topic}: {exc}") from exc
    topic = metadata.topics.get(family.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        raise KafkaUnavailable(f"topic {family.topic} does not exist on the broker")
    ranges = []
    for partition in sorted(topic.partitions):
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(family.topic, partition), timeout=timeout
            )
        except KafkaException as exc:
            raise KafkaUnavailable(f"no watermarks for {family.topic}/{partition}: {exc}") from exc
        first = max(start.get(partition, low), low)
        ranges.append(PartitionRange(partition, first, first, high))
    return ranges


def consume_ranges(
    consumer: Consumer,
    family: StreamFamily,
    ranges: list[PartitionRange],
    max_messages: int,
    idle_timeout: float,
) -> tuple[list[Message], dict[int, int], str | None]:
    """Consume every partition from its first offset to the end of its log, at most
    `max_messages` in all. Returns the messages, the high watermark each partition reported
    when its end was reached, and why it stopped early, if it did.

    The end is found by fetching (partition EOF), not from ListOffsets: the embedded Tansu
    broker answers ListOffsets with the base offset of the last record batch, which can lie
    below the true end."""
    consumer.assign([TopicPartition(family.topic, r.partition, r.first) for r in ranges])
    messages: list[Message] = []
    ends: dict[int, int] = {}
    last_progress = time.monotonic()
    while len(ends) < len(ranges) and len(messages) < max_messages:
        batch = consumer.consume(min(FETCH_BATCH, max_messages - len(messages)), timeout=0.5)
        if not batch:
            if time.monotonic() - last_progress > idle_timeout:
                return messages, ends, f"no answer for {idle_timeout:.0f}s (broker unreachable?)"
            continue
        last_progress = time.monotonic()
        for record in batch:
            error = record.error()
            if error is None:
                timestamp_type, timestamp = record.timestamp()
                messages.append(
                    Message(record.partition(), record.offset(), record.key(), record.value(),
                            timestamp if timestamp_type else None)
                )  # fmt: skip
            elif error.code() == KafkaError._PARTITION_EOF:
                ends[record.partition()] = record.offset()
            elif error.fatal() or not error.retriable():
                return messages, ends, f"consumer error: {error.str()}"
    return messages, ends, None


# --- writing --------------------------------------------------------------------------------


def write_batch(
    conn: duckdb.DuckDBPyConnection,
    family: StreamFamily,
    messages: list[Message],
    decoded: DecodedBatch,
) -> tuple[dict[str, int], int]:
    """One transaction: rows, dead letters and offsets. Returns (inserted per table, dead)."""
    next_offsets: dict[int, int] = {}
    for message in messages:
        next_offsets[message.partition] = max(
            next_offsets.get(message.partition, 0), message.offset + 1
        )
    conn.execute("BEGIN TRANSACTION")
    try:
        landed = {
            name: insert_ignoring_duplicates(conn, name, batch)
            for name, batch in decoded.tables.items()
        }
        dead = insert_ignoring_duplicates(conn, DEAD_LETTER_TABLE, decoded.dead_letters)
        per_partition_landed = Counter[int]()
        per_partition_dead = Counter[int]()
        for batch in decoded.tables.values():
            per_partition_landed.update(batch.column("kafka_partition").to_pylist())
        per_partition_dead.update(decoded.dead_letters.column("kafka_partition").to_pylist())
        advance_offsets(
            conn,
            family,
            [
                (p, n, per_partition_landed[p], per_partition_dead[p])
                for p, n in sorted(next_offsets.items())
            ],
        )
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return landed, dead


def commit_to_group(
    consumer: Consumer, family: StreamFamily, next_offsets: dict[int, int]
) -> str | None:
    """Tell the consumer group how far the warehouse got; the error text if Kafka refused."""
    if not next_offsets:
        return None
    try:
        consumer.commit(
            offsets=[TopicPartition(family.topic, p, n) for p, n in sorted(next_offsets.items())],
            asynchronous=False,
        )
    except KafkaException as exc:
        return str(exc)
    return None


def land_stream(
    connect: Connect,
    bootstrap_servers: str,
    family: StreamFamily,
    *,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    timeout: float = 10.0,
) -> LandingReport:
    """Land up to `max_messages` new messages of `family` exactly once."""
    with connect() as conn:
        ensure_tables(conn, family)
        start = read_offsets(conn, family)
    report = LandingReport(family.name, family.topic)
    consumer = consumer_for(family, bootstrap_servers)
    try:
        planned = plan_ranges(consumer, family, start, timeout)
        messages, ends, report.stopped_early = consume_ranges(
            consumer, family, planned, max_messages, idle_timeout=timeout
        )
        decoded = Decoder(family, max_message_bytes).decode(messages)
        with connect() as conn:
            landed, dead = write_batch(conn, family, messages, decoded)
            now_at = read_offsets(conn, family)
        report.consumed = len(messages)
        report.landed = landed
        report.dead_lettered = dead
        report.duplicates_ignored = len(messages) - sum(landed.values()) - dead
        report.reasons = dict(decoded.reasons)
        last = {m.partition: m.offset + 1 for m in messages}
        report.ranges = [
            PartitionRange(r.partition, r.first, last.get(r.partition, r.first), r.high_watermark)
            for r in planned
        ]
        report.kafka_commit_error = commit_to_group(
            consumer, family, {p: n for p, n in now_at.items() if p in last}
        )
        report.remaining_lag = _remaining_lag(consumer, family, planned, now_at, ends, timeout)
    finally:
        consumer.close()
    log.info("stream landed", extra={"report": report.to_dict()})
    return report


def _remaining_lag(
    consumer: Consumer,
    family: StreamFamily,
    planned: list[PartitionRange],
    now_at: dict[int, int],
    ends: dict[int, int],
    timeout: float,
) -> int:
    """Messages left after this run: from fetched ends where known, else from ListOffsets."""
    lag = 0
    for r in planned:
        high = ends.get(r.partition)
        if high is None:
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(family.topic, r.partition), timeout=timeout, cached=True
                )
            except KafkaException:
                high = r.high_watermark
        lag += max(high - now_at.get(r.partition, r.first), 0)
    return lag
