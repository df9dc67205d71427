"""Exactly-once landing of a topic into DuckDB (decision 1 of the design).

A run opens one DuckDB transaction, reads where the warehouse's own rows say each partition
stopped, consumes a bounded batch from there, writes the rows with their (topic, partition,
offset) and the new offsets, commits, and only then commits the offsets to the Kafka consumer
group, so that sensors can see the backlog without opening DuckDB. A run that dies at any point
leaves the next one to start where the warehouse says; two runs at once conflict on the offsets
row and one of them is rolled back. Landing tables carry no key index: the position comes from
the data, and an index on the coordinates would cost as much as the insert itself.

Bad messages are data: every message that is empty, oversized, not JSON, of an unknown type,
against its schema, or that refers to a row the warehouse does not hold (feedback on an unknown
interaction) goes to the dead-letter table with the reason; landed + dead-lettered equals
consumed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, cast

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.tables import (
    DEAD_LETTER_TABLE,
    advance_offsets,
    ensure_tables,
    insert_events,
    insert_rows,
    read_offsets,
    split_unreferenced,
)
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.lib.collector import collector_paused
from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)

DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
FETCH_BATCH = 10_000

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


@dataclass
class DecodedBatch:
    """One fetched batch, sorted out: the valid JSON per landing table (validated, typed by
    DuckDB on insert), the dead letters, and how far each partition got."""

    payloads: dict[str, pa.Table]  # table → kafka_partition, kafka_offset, payload
    dead_letters: pa.Table
    reasons: Counter[str]
    next_offsets: dict[int, int]
    landed_per_partition: Counter[int]
    dead_per_partition: Counter[int]


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
PAYLOAD_SCHEMA = pa.schema(  # the valid messages of one landing table, before typing
    [
        pa.field("kafka_partition", pa.int32()),
        pa.field("kafka_offset", pa.int64()),
        pa.field("payload", pa.large_string()),
    ]
)
_OPEN, _CLOSE = ord("{"), ord("}")


_DECODE_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError)  # msgspec raises the latter as is


def _classify(error: Exception) -> str:
    text = str(error)
    if isinstance(error, UnicodeDecodeError) or (
        isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError)
    ):
        return "invalid_json"
    if "at `$.type`" in text or "missing required field `type`" in text:
        return "unknown_type"
    return "schema"


class Decoder:
    """Validates the messages of one topic family with msgspec.

    A batch is first decoded as newline-delimited JSON in one call, which costs a third of
    decoding message by message; a batch where that cannot be exact (a message that is empty,
    oversized, spans lines or is not one object) or that fails is decoded message by message,
    so that each bad message gets its own reason. Valid payloads are kept as JSON text and
    typed in bulk by DuckDB on insert; building Python objects per event would cost more than
    consuming them."""

    def __init__(self, family: StreamFamily, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.family = family
        self.max_message_bytes = max_message_bytes
        union = family.event_types[0]
        for event_type in family.event_types[1:]:
            union = union | event_type  # type: ignore[assignment]
        self._decoder = msgspec.json.Decoder(union)
        self._tables = [t.table for t in family.tables]
        self._index = {t.event_type: i for i, t in enumerate(family.tables)}

    def decode(self, records: list[KafkaMessage]) -> DecodedBatch:
        count = len(records)
        values = list(map(KafkaMessage.value, records))
        partitions = np.fromiter(map(KafkaMessage.partition, records), dtype=np.int32, count=count)
        offsets = np.fromiter(map(KafkaMessage.offset, records), dtype=np.int64, count=count)
        fast = self._decode_lines(values)
        if fast is not None:
            payload, tables = fast
            present = cast(list[bytes], values)  # no None: checked on the fast path
            return self._batch(partitions, offsets, present, payload, tables, [], Counter())
        return self._one_by_one(records, values, partitions, offsets)

    def _decode_lines(self, values: list[bytes | None]) -> tuple[pa.Array, np.ndarray] | None:
        """(payloads, table index per message) when every message decodes, else None."""
        if not values or None in values:
            return None
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        if lengths.min() < 2 or lengths.max() > self.max_message_bytes:
            return None
        buffer = b"\n".join(values)
        ends = np.cumsum(lengths + 1)  # each message's end, past its newline
        starts = ends - lengths - 1
        data = np.frombuffer(buffer, dtype=np.uint8)
        if (
            buffer.count(b"\n") != len(values) - 1  # a message spans lines
            or not (data[starts] == _OPEN).all()
            or not (data[ends - 2] == _CLOSE).all()
        ):
            return None
        try:
            events = self._decoder.decode_lines(buffer)
        except _DECODE_ERRORS:
            return None
        if len(events) != len(values):  # a line held two objects
            return None
        bounds = np.append(starts, len(buffer))
        payload = pa.LargeStringArray.from_buffers(
            len(values), pa.py_buffer(bounds), pa.py_buffer(buffer)
        )
        if len(self._tables) == 1:
            return payload, np.zeros(len(values), dtype=np.int8)
        types = list(map(type, events))
        if types.count(types[0]) == len(types):  # the usual batch: one event type
            return payload, np.full(len(types), self._index[types[0]], dtype=np.int8)
        tables = np.fromiter(map(self._index.__getitem__, types), dtype=np.int8, count=len(types))
        return payload, tables

    def _one_by_one(
        self,
        records: list[KafkaMessage],
        values: list[bytes | None],
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> DecodedBatch:
        valid: list[int] = []
        tables: list[int] = []
        dead: list[tuple] = []
        reasons: Counter[str] = Counter()
        decode, index, limit = self._decoder.decode, self._index, self.max_message_bytes
        for i, value in enumerate(values):
            size = len(value) if value else 0
            if not value:
                reason, error = "empty", "message has no value"
            elif size > limit:
                reason, error = "oversized", f"{size} bytes exceeds the limit of {limit}"
            else:
                try:
                    event = decode(value)
                except _DECODE_ERRORS as exc:
                    reason, error = _classify(exc), str(exc)
                else:
                    valid.append(i)
                    tables.append(index[type(event)])
                    continue
            reasons[reason] += 1
            record = records[i]
            timestamp_type, timestamp = record.timestamp()
            dead.append(
                (self.family.topic, int(partitions[i]), int(offsets[i]), record.key(),
                 timestamp if timestamp_type else None, reason, error, size, value)
            )  # fmt: skip
        kept: list[bytes] = [values[i] for i in valid]  # type: ignore[misc]
        keep = np.array(valid, dtype=np.int64)
        return self._batch(
            partitions,
            offsets,
            kept,
            _payload_array(kept),
            np.array(tables, dtype=np.int8),
            dead,
            reasons,
            keep=keep,
        )

    def _batch(
        self,
        partitions: np.ndarray,
        offsets: np.ndarray,
        values: list[bytes],
        payload: pa.Array,
        tables: np.ndarray,
        dead: list[tuple],
        reasons: Counter[str],
        keep: np.ndarray | None = None,
    ) -> DecodedBatch:
        """Group the valid payloads by landing table; account for every message."""
        next_offsets = {
            int(p): int(offsets[partitions == p].max()) + 1 for p in np.unique(partitions)
        }
        valid_partitions = partitions if keep is None else partitions[keep]
        valid_offsets = offsets if keep is None else offsets[keep]
        payloads = {}
        for i, table in enumerate(self._tables):
            mine = tables == i
            if mine.all():
                rows = (valid_partitions, valid_offsets, payload)
            else:
                rows = (
                    valid_partitions[mine],
                    valid_offsets[mine],
                    _payload_array(list(compress(values, mine))),
                )
            payloads[table] = pa.Table.from_arrays(
                [_numeric(rows[0]), _numeric(rows[1]), rows[2]], schema=PAYLOAD_SCHEMA
            )
        return DecodedBatch(
            payloads,
            _dead_letter_table(dead),
            reasons,
            next_offsets,
            _counts(valid_partitions),
            Counter(row[1] for row in dead),
        )


def _counts(partitions: np.ndarray) -> Counter[int]:
    values, counts = np.unique(partitions, return_counts=True)
    return Counter({int(p): int(n) for p, n in zip(values, counts, strict=True)})


def _numeric(values: np.ndarray) -> pa.Array:
    """A zero-copy Arrow view of a numpy array (`pa.array` of numpy imports pandas)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(
        pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)]
    )


def _payload_array(values: list[bytes]) -> pa.Array:
    """One Arrow string array built from a whole buffer: `pa.array` of many bytes is slow."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ends[1:])
    return pa.LargeStringArray.from_buffers(
        len(values), pa.py_buffer(ends), pa.py_buffer(b"".join(values))
    )


def _dead_letter_table(rows: list[tuple]) -> pa.Table:
    if not rows:  # not `empty_table()`, nor `pa.array` of lists: both import pandas (0.4 s)
        return pa.Table.from_batches([], schema=DEAD_LETTER_SCHEMA)
    columns = list(zip(*rows, strict=True))
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


class RangeFetch:
    """Consumes every partition from its first offset to the end of its log, at most
    `max_messages` in all, a fetched batch at a time; afterwards `ends` holds the high
    watermark each partition reported when its end was reached, and `stopped_early` why it
    stopped before, if it did.

    The end is found by fetching (partition EOF), not from ListOffsets: the embedded Tansu
    broker answers ListOffsets with the base offset of the last record batch, which can lie
    below the true end."""

    def __init__(
        self,
        consumer: Consumer,
        family: StreamFamily,
        ranges: list[PartitionRange],
        max_messages: int,
        idle_timeout: float,
    ):
        self.consumer, self.family, self.ranges = consumer, family, ranges
        self.max_messages, self.idle_timeout = max_messages, idle_timeout
        self.ends: dict[int, int] = {}
        self.stopped_early: str | None = None

    def __iter__(self) -> Iterator[list[KafkaMessage]]:
        consumer = self.consumer
        consumer.assign(
            [TopicPartition(self.family.topic, r.partition, r.first) for r in self.ranges]
        )
        fetched = 0
        last_progress = time.monotonic()
        while len(self.ends) < len(self.ranges) and fetched < self.max_messages:
            batch = consumer.consume(min(FETCH_BATCH, self.max_messages - fetched), timeout=0.5)
            if not batch:
                if time.monotonic() - last_progress > self.idle_timeout:
                    self.stopped_early = (
                        f"no answer for {self.idle_timeout:.0f}s (broker unreachable?)"
                    )
                    return
                continue
            last_progress = time.monotonic()
            records = [record for record in batch if record.error() is None]
            if len(records) < len(batch) and not self._handle_errors(batch):
                if records:
                    yield records
                return
            if records:
                fetched += len(records)
                yield records

    def _handle_errors(self, batch: list[KafkaMessage]) -> bool:
        """Note partition ends; False on an error that ends the fetch."""
        for record in batch:
            error = record.error()
            if error is None:
                continue
            if error.code() == KafkaError._PARTITION_EOF:
                self.ends[record.partition()] = record.offset()
            elif error.fatal() or not error.retriable():
                self.stopped_early = f"consumer error: {error.str()}"
                return False
        return True


# --- writing --------------------------------------------------------------------------------


class ConcurrentLanding(RuntimeError):
    """Another run landed the same partitions first; this run wrote nothing."""


@dataclass
class Written:
    landed: dict[str, int]
    dead: int
    reasons: Counter[str]
    next_offsets: dict[int, int]
    now_at: dict[int, int]  # where the warehouse stands after the commit

    @property
    def consumed(self) -> int:
        return sum(self.landed.values()) + self.dead


class LandingTransaction:
    """One DuckDB transaction that lands decoded batches as they come: rows, dead letters and
    offsets of every batch, if the warehouse still stands where this run started. A run that
    committed in between wins, and one that commits while this transaction is open makes
    DuckDB refuse one of the two commits.

    The family's first table (the bulk of it: host metrics, alerts) takes its rows through
    one INSERT that reads them as a stream while they are still being decoded; DuckDB appends
    fastest in one statement, and many small ones would cost half as much again. Rows of the
    other tables, and of a table whose rows must refer to others, are inserted at the end."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, family: StreamFamily, start: dict[int, int]
    ):
        self.conn, self.family = conn, family
        self.next_offsets: dict[int, int] = {}
        self.landed_per_partition: Counter[int] = Counter()
        self.dead_per_partition: Counter[int] = Counter()
        self.reasons: Counter[str] = Counter()
        self.landed = {t.table: 0 for t in family.tables}
        self._dead_letters: list[pa.Table] = []
        self._held: dict[str, list[pa.Table]] = {t.table: [] for t in family.tables}
        first = family.tables[0]
        self._streamed = first if first.reference is None else None
        conn.execute("BEGIN TRANSACTION")
        try:
            now_at = read_offsets(conn, family)
            moved = sorted(p for p in now_at.keys() | start.keys() if now_at.get(p) != start.get(p))
            if moved:
                raise ConcurrentLanding(
                    f"{family.topic}: partitions {moved} advanced since this run started "
                    "(another landing run?); nothing written"
                )
        except BaseException:
            self.rollback()
            raise

    def land(self, batches: Iterable[DecodedBatch]) -> None:
        """Write the rows of `batches`, which may still be arriving, and tally them."""
        streamed = self._streamed
        if streamed is None:
            for batch in batches:
                self._tally(batch)
        else:
            reader = pa.RecordBatchReader.from_batches(
                PAYLOAD_SCHEMA, self._streamed_rows(batches, streamed.table)
            )
            self.landed[streamed.table] = insert_events(
                self.conn, streamed, self.family.topic, reader
            )
        for t in self.family.tables:
            if t is streamed:
                continue
            rows = _concat(self._held.pop(t.table))
            if t.reference is not None:
                rows, unknown = split_unreferenced(self.conn, t, self.family.topic, rows)
                if unknown is not None and unknown.num_rows:
                    moved_out = _counts(unknown.column("kafka_partition").to_numpy())
                    self.landed_per_partition.subtract(moved_out)
                    self.dead_per_partition.update(moved_out)
                    self.reasons[t.reference.reason] += unknown.num_rows
                    self._dead_letters.append(unknown.cast(DEAD_LETTER_SCHEMA))
            self.landed[t.table] = insert_events(self.conn, t, self.family.topic, rows)

    def _streamed_rows(
        self, batches: Iterable[DecodedBatch], table: str
    ) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self._tally(batch)
            yield from batch.payloads[table].to_batches()

    def _tally(self, batch: DecodedBatch) -> None:
        """Count a batch in, and hold the rows that are inserted at the end."""
        for partition, offset in batch.next_offsets.items():
            self.next_offsets[partition] = max(offset, self.next_offsets.get(partition, 0))
        self.landed_per_partition.update(batch.landed_per_partition)
        self.dead_per_partition.update(batch.dead_per_partition)
        self.reasons.update(batch.reasons)
        self._dead_letters.append(batch.dead_letters)
        for table, rows in batch.payloads.items():
            if self._streamed is None or table != self._streamed.table:
                self._held[table].append(rows)

    def commit(self) -> Written:
        try:
            dead = insert_rows(self.conn, DEAD_LETTER_TABLE, _concat(self._dead_letters))
            advance_offsets(
                self.conn,
                self.family,
                [
                    (p, n, self.landed_per_partition[p], self.dead_per_partition[p])
                    for p, n in sorted(self.next_offsets.items())
                ],
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        now_at = read_offsets(self.conn, self.family)
        return Written(self.landed, dead, self.reasons, self.next_offsets, now_at)

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")


def write_batches(
    conn: duckdb.DuckDBPyConnection,
    family: StreamFamily,
    start: dict[int, int],
    batches: Iterable[DecodedBatch],
) -> Written:
    """Land decoded batches in one transaction (see `LandingTransaction`)."""
    transaction = LandingTransaction(conn, family, start)
    try:
        transaction.land(batches)
    except BaseException:
        transaction.rollback()
        raise
    return transaction.commit()


class LandingAborted(RuntimeError):
    """The run stopped before it had decoded every batch; the writer rolled back."""


_DONE, _ABORT = object(), object()


class BackgroundWriter:
    """`write_batches` on a thread of its own, fed through a queue while batches are decoded:
    DuckDB releases the GIL while it inserts, so on two cores it appends one batch while
    Python validates the next.

    The thread opens the warehouse itself, so the connection only ever lives on it. An error
    on either side rolls the transaction back: `put` raises the writer's error as soon as it
    is known, and leaving the block with an error stops the writer's stream."""

    def __init__(self, connect: Connect, family: StreamFamily, start: dict[int, int]):
        self._connect, self._family, self._start = connect, family, start
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._stream_error: LandingAborted | None = None
        self._written: Written | None = None
        self._thread = threading.Thread(target=self._run, name="landing-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def put(self, batch: DecodedBatch) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def result(self) -> Written:
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._written is None:
            raise LandingAborted("the landing writer stopped without a result")
        return self._written

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self._thread.is_alive():
            self._queue.put(_ABORT)
            self._thread.join()

    def _batches(self) -> Iterator[DecodedBatch]:
        while (item := self._queue.get()) is not _DONE:
            if item is _ABORT:  # DuckDB wraps what its stream raises: keep the original
                self._stream_error = LandingAborted(
                    "the landing run stopped before every batch was decoded"
                )
                raise self._stream_error
            yield cast(DecodedBatch, item)

    def _run(self) -> None:
        try:
            with self._connect() as conn:
                self._written = write_batches(conn, self._family, self._start, self._batches())
        except BaseException as exc:
            self._error = self._stream_error or exc


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else None


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
    decoder = Decoder(family, max_message_bytes)
    consumer = consumer_for(family, bootstrap_servers)
    try:
        planned = plan_ranges(consumer, family, start, timeout)
        fetch = RangeFetch(consumer, family, planned, max_messages, timeout)
        with collector_paused():  # the batches' Message objects, none in a cycle
            # fetch everything first: pausing between fetches to decode makes librdkafka's
            # prefetching stall, and fetching then takes twice as long
            fetched = list(fetch)
            with BackgroundWriter(connect, family, start) as writer:
                while fetched:  # each fetched batch's messages are freed once decoded
                    writer.put(decoder.decode(fetched.pop(0)))
                written = writer.result()
        now_at = written.now_at
        report.consumed = written.consumed
        report.landed = written.landed
        report.dead_lettered = written.dead
        report.reasons = dict(written.reasons)
        report.stopped_early = fetch.stopped_early
        last = written.next_offsets
        report.ranges = [
            PartitionRange(r.partition, r.first, last.get(r.partition, r.first), r.high_watermark)
            for r in planned
        ]
        # mirror every partition the warehouse knows, not only this run's: a run that died
        # between the two commits left the group behind on partitions with nothing new
        report.kafka_commit_error = commit_to_group(consumer, family, now_at)
        report.remaining_lag = _remaining_lag(
            consumer, family, planned, now_at, fetch.ends, timeout
        )
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
