"""Decoding a fetched batch of one topic family: the valid messages per landing table, as JSON
DuckDB types on insert, and every bad one as a dead letter with its reason (empty, oversized,
not JSON, unknown type, against its schema)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import compress
from typing import cast

import msgspec
import numpy as np
import pyarrow as pa
from confluent_kafka import Message as KafkaMessage

from dagster_platform.kafka.events import StreamFamily

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576  # larger messages are dead-lettered


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
            partition_counts(valid_partitions),
            Counter(row[1] for row in dead),
        )


def partition_counts(partitions: np.ndarray) -> Counter[int]:
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
