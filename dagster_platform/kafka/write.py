"""The DuckDB side of a landing: one transaction holding the rows and the offsets they came to,
refused when another run got there first, run inline or on a writer thread that streams the
bulk table into DuckDB while the next batch is decoded."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import cast

import duckdb
import pyarrow as pa

from dagster_platform.kafka.decode import (
    DEAD_LETTER_SCHEMA,
    PAYLOAD_SCHEMA,
    DecodedBatch,
    partition_counts,
)
from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.tables import (
    DEAD_LETTER_TABLE,
    advance_offsets,
    insert_events,
    insert_rows,
    read_offsets,
    split_unreferenced,
)

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


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
                    moved_out = partition_counts(unknown.column("kafka_partition").to_numpy())
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
            try:
                advance_offsets(
                    self.conn,
                    self.family,
                    [
                        (p, n, self.landed_per_partition[p], self.dead_per_partition[p])
                        for p, n in sorted(self.next_offsets.items())
                    ],
                )
                self.conn.execute("COMMIT")
            except duckdb.ConstraintException as exc:
                # a partition's first offsets row, inserted by a run that started beside this
                # one and committed first: the same overtaking the BEGIN check catches later on
                raise ConcurrentLanding(
                    f"{self.family.topic}: another landing run recorded these partitions' "
                    f"first offsets first; nothing written ({exc})"
                ) from exc
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
