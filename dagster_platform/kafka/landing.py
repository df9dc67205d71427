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
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from dagster_platform.collector import collector_paused
from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.tables import (
    DEAD_LETTER_TABLE,
    advance_offsets,
    ensure_tables,
    insert_events,
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


@dataclass
class DecodedBatch:
    """One batch of messages, sorted out: the valid JSON per landing table (validated, typed by
    DuckDB on insert), the dead letters, and how far each partition got."""

    payloads: dict[str, pa.Table]  # table → kafka_partition, kafka_offset, payload
    dead_letters: pa.Table
    reasons: Counter[str]
    next_offsets: dict[int, int]

    @property
    def consumed(self) -> int:
        return sum(t.num_rows for t in self.payloads.values()) + self.dead_letters.num_rows


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
    """Validates the messages of one topic family, one msgspec pass per message.

    Valid payloads are kept as JSON text and typed in bulk by DuckDB on insert; building
    Python objects per event would cost more than consuming them."""

    def __init__(self, family: StreamFamily, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.family = family
        self.max_message_bytes = max_message_bytes
        union = family.event_types[0]
        for event_type in family.event_types[1:]:
            union = union | event_type  # type: ignore[assignment]
        self._decoder = msgspec.json.Decoder(union)
        self._table_of = {t.event_type: t.table for t in family.tables}

    def decode(self, records: list[KafkaMessage]) -> DecodedBatch:
        valid: dict[str, tuple[list[int], list[int], list[bytes]]] = {
            table: ([], [], []) for table in self._table_of.values()
        }
        dead: list[tuple] = []
        reasons: Counter[str] = Counter()
        next_offsets: dict[int, int] = {}
        decode, table_of, limit = self._decoder.decode, self._table_of, self.max_message_bytes
        for record in records:
            value, partition, offset = record.value(), record.partition(), record.offset()
            next_offsets[partition] = offset + 1
            size = len(value) if value else 0
            if not value:
                reason, error = "empty", "message has no value"
            elif size > limit:
                reason, error = "oversized", f"{size} bytes exceeds the limit of {limit}"
            else:
                try:
                    event = decode(value)
                except msgspec.MsgspecError as exc:
                    reason, error = _classify(exc), str(exc)
                else:
                    partitions, offsets, values = valid[table_of[type(event)]]
                    partitions.append(partition)
                    offsets.append(offset)
                    values.append(value)
                    continue
            reasons[reason] += 1
            timestamp_type, timestamp = record.timestamp()
            dead.append(
                (self.family.topic, partition, offset, record.key(),
                 timestamp if timestamp_type else None, reason, error, size, value)
            )  # fmt: skip
        payloads = {table: _payload_table(*columns) for table, columns in valid.items()}
        return DecodedBatch(payloads, _dead_letter_table(dead), reasons, next_offsets)


def _payload_table(partitions: list[int], offsets: list[int], values: list[bytes]) -> pa.Table:
    """Arrow columns built from whole buffers: one `pa.array` of many bytes objects is slow."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ends[1:])
    payload = pa.LargeStringArray.from_buffers(
        len(values), pa.py_buffer(ends), pa.py_buffer(b"".join(values))
    )
    return pa.table(
        {
            # via numpy: pyarrow converts a list of ints to int32 some 50 times slower
            "kafka_partition": pa.array(
                np.fromiter(partitions, dtype=np.int32, count=len(partitions))
            ),
            "kafka_offset": pa.array(np.fromiter(offsets, dtype=np.int64, count=len(offsets))),
            "payload": payload,
        }
    )


def _dead_letter_table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in DEAD_LETTER_SCHEMA]
    return pa.table(
        [
            pa.array(column, type=f.type)
            for column, f in zip(columns, DEAD_LETTER_SCHEMA, strict=True)
        ],
        schema=DEAD_LETTER_SCHEMA,
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
) -> tuple[list[KafkaMessage], dict[int, int], str | None]:
    """Consume every partition from its first offset to the end of its log, at most
    `max_messages` in all. Returns the records, the high watermark each partition reported
    when its end was reached, and why it stopped early, if it did.

    The end is found by fetching (partition EOF), not from ListOffsets: the embedded Tansu
    broker answers ListOffsets with the base offset of the last record batch, which can lie
    below the true end."""
    consumer.assign([TopicPartition(family.topic, r.partition, r.first) for r in ranges])
    records: list[KafkaMessage] = []
    ends: dict[int, int] = {}
    last_progress = time.monotonic()
    while len(ends) < len(ranges) and len(records) < max_messages:
        batch = consumer.consume(min(FETCH_BATCH, max_messages - len(records)), timeout=0.5)
        if not batch:
            if time.monotonic() - last_progress > idle_timeout:
                return records, ends, f"no answer for {idle_timeout:.0f}s (broker unreachable?)"
            continue
        last_progress = time.monotonic()
        for record in batch:
            error = record.error()
            if error is None:
                records.append(record)
            elif error.code() == KafkaError._PARTITION_EOF:
                ends[record.partition()] = record.offset()
            elif error.fatal() or not error.retriable():
                return records, ends, f"consumer error: {error.str()}"
    return records, ends, None


# --- writing --------------------------------------------------------------------------------


def write_batch(
    conn: duckdb.DuckDBPyConnection, family: StreamFamily, decoded: DecodedBatch
) -> tuple[dict[str, int], int]:
    """One transaction: rows, dead letters and offsets. Returns (inserted per table, dead)."""
    tables = {t.table: t for t in family.tables}
    conn.execute("BEGIN TRANSACTION")
    try:
        landed = {
            name: insert_events(conn, tables[name], family.topic, batch)
            for name, batch in decoded.payloads.items()
        }
        dead = insert_ignoring_duplicates(conn, DEAD_LETTER_TABLE, decoded.dead_letters)
        landed_per_partition = Counter[int]()
        for batch in decoded.payloads.values():
            landed_per_partition.update(_partition_counts(batch))
        dead_per_partition = _partition_counts(decoded.dead_letters)
        advance_offsets(
            conn,
            family,
            [
                (p, n, landed_per_partition[p], dead_per_partition.get(p, 0))
                for p, n in sorted(decoded.next_offsets.items())
            ],
        )
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return landed, dead


def _partition_counts(batch: pa.Table) -> dict[int, int]:
    counts = pc.value_counts(batch.column("kafka_partition"))
    return {item["values"].as_py(): item["counts"].as_py() for item in counts}


def commit_to_group(
    consumer: Consumer, family: StreamFamily, next_offsets: dict[int, int]
) -> str | None:
    """Tell the consumer group how far the warehouse got (the warehouse is the truth, the group
    a copy for the sensors); the error text if Kafka refused."""
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
        with collector_paused():  # the batch's Message objects, none in a cycle
            records, ends, report.stopped_early = consume_ranges(
                consumer, family, planned, max_messages, idle_timeout=timeout
            )
            decoded = Decoder(family, max_message_bytes).decode(records)
            del records[:]  # the batch's Message objects, before the collector is back
        with connect() as conn:
            landed, dead = write_batch(conn, family, decoded)
            now_at = read_offsets(conn, family)
        report.consumed = decoded.consumed
        report.landed = landed
        report.dead_lettered = dead
        report.duplicates_ignored = decoded.consumed - sum(landed.values()) - dead
        report.reasons = dict(decoded.reasons)
        last = decoded.next_offsets
        report.ranges = [
            PartitionRange(r.partition, r.first, last.get(r.partition, r.first), r.high_watermark)
            for r in planned
        ]
        # mirror every partition the warehouse knows, not only this run's: a run that died
        # between the two commits left the group behind on partitions with nothing new
        report.kafka_commit_error = commit_to_group(consumer, family, now_at)
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
