"""Warehouse operations on a DuckDB connection, kept free of Dagster so they test alone.

A table is replaced in one transaction, so readers see the old rows or the new ones, never a
half-written table, and a failed load leaves the previous good table in place.

`open_warehouse` shares one DuckDB connection per file among this process's threads: each
caller gets a cursor of it (DuckDB's own connection to the same database, safe in the caller's
thread), counted, and the last to leave closes it, so Dagster runs in other processes can land
data while nobody here uses the file. A plain `duckdb.connect` per caller does not do: DuckDB
keeps one database per file and process and refuses a second connection with other settings
("different configuration": read-only beside read-write) instead of waiting. Nor does a
library: dagster-duckdb connects per use (the same refusal), and connection pools (SQLAlchemy's)
keep connections open, holding the file lock against every other process. What is needed,
readers together, writers in turn and a reopen between modes, is a threading.Condition.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:  # polars takes over SIGINT once imported; the CLI must not load it here
    import polars as pl

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(identifier: str) -> str:
    if not _IDENTIFIER.match(identifier):
        raise ValueError(f"not a plain SQL identifier: {identifier!r}")
    return f'"{identifier}"'


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = ?",
        [table],
    ).fetchall()  # read to the end: DuckDB 2.0 refuses new work on a half-read result
    return bool(row and row[0][0])


@contextmanager
def registered(conn: duckdb.DuckDBPyConnection, name: str, data: object) -> Iterator[None]:
    """`data` (Arrow, a reader of it) as view `name` for the block. When the block fails, the
    view goes with the transaction's rollback: an aborted transaction refuses even to drop
    it, and that refusal must not hide the error that aborted it."""
    conn.register(name, data)
    try:
        yield
    except BaseException:
        with suppress(duckdb.Error):
            conn.unregister(name)
        raise
    conn.unregister(name)


def replace_table(conn: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> int:
    """Atomically replace `table` with the rows of `frame`; return the row count written."""
    arrow = frame.to_arrow()
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.register("_incoming", arrow)
        conn.execute(f"CREATE OR REPLACE TABLE {quote(table)} AS SELECT * FROM _incoming")
        conn.unregister("_incoming")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return frame.height


def key_values(conn: duckdb.DuckDBPyConnection, table: str, column: str) -> set[str] | None:
    """Distinct non-null values of `table.column` as text; None when the table does not exist."""
    if not table_exists(conn, table):
        return None
    rows = conn.execute(
        f"SELECT DISTINCT CAST({quote(column)} AS VARCHAR) FROM {quote(table)} "
        f"WHERE {quote(column)} IS NOT NULL"
    ).fetchall()
    return {row[0] for row in rows}


def read_table(conn: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame:
    return conn.sql(f"SELECT * FROM {quote(table)}").pl()


OPEN_RETRY_S = 0.2


class WarehouseUpgradeError(RuntimeError):
    """A thread holding only read-only cursors asked to write: waiting would wait on itself."""


@contextmanager
def open_warehouse(
    path: Path, read_only: bool = False, wait_seconds: float = 15.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of this process's one connection to `path`, closed when the block ends.

    Read-only callers share the connection in whichever mode it is open. Read-write callers
    take turns: two transactions creating or altering one table abort each other (a catalog
    write-write conflict, as two answers recording at once would), and a check-then-write
    (propose a kill unless one is pending) must not interleave. A writer finding the connection
    read-only waits until its users leave and reopens it read-write; readers arriving meanwhile
    queue behind it. A thread's nested calls are served at once (it never waits on itself),
    except a write inside its own read-only block, which raises `WarehouseUpgradeError`.

    What `read_only` guarantees: opened read-only, DuckDB refuses every write; a reader that
    joins a read-write connection gets a cursor that could write, so there `read_only` is the
    caller's word, not enforced. Opening waits up to `wait_seconds` while another process holds
    the file lock (Dagster runs keep their connections short) or a connection opened here
    without this function holds the file in the other mode, then raises DuckDB's error.
    Waits for this process's own users are not bounded: their blocks are short, and the one
    wait that could never end, a thread's on itself, raises instead."""
    owner = _owner_of(path)
    cursor, release = owner.enter(read_only, wait_seconds)
    try:
        yield cursor
    finally:
        release()


class _Owner:
    """The connection to one file in this process, and whose turn it is."""

    def __init__(self, path: str):
        self.path = path
        self._turn = threading.Condition()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._conn_read_only = False
        self._users = 0
        self._writer: int | None = None  # the thread holding the read-write turn
        self._waiting_writers = 0
        self._held: dict[int, list[int]] = {}  # thread -> [read-only, read-write] cursors

    def enter(
        self, read_only: bool, wait_seconds: float
    ) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
        thread = threading.get_ident()
        with self._turn:
            held = self._held.setdefault(thread, [0, 0])
            try:
                if read_only:
                    self._wait_to_read(nested=any(held))
                else:
                    self._wait_to_write(thread, held)
                if self._conn is None:
                    self._conn = _connect(self.path, read_only, wait_seconds)
                    self._conn_read_only = read_only
                cursor = self._conn.cursor()
            except BaseException:
                self._forget(thread, held)
                raise
            held[0 if read_only else 1] += 1
            self._users += 1
            self._turn.notify_all()  # readers queued behind a writer that has now opened
        slot = 0 if read_only else 1
        return cursor, lambda: self._leave(thread, slot, cursor)

    def _wait_to_read(self, nested: bool) -> None:
        if not nested:  # a nested reader never queues: the writer ahead waits on its thread
            self._turn.wait_for(lambda: not self._waiting_writers or self._writable())

    def _wait_to_write(self, thread: int, held: list[int]) -> None:
        if held[1]:
            return  # its own turn already
        if held[0]:
            raise WarehouseUpgradeError(
                f"this thread holds a read-only connection to {self.path} and asks for a "
                "read-write one, which would wait for the thread itself to leave: open the "
                "outer block read-write (open_warehouse(path)), or write after it ends"
            )
        self._waiting_writers += 1
        try:
            self._turn.wait_for(lambda: self._writer is None and not self._read_only_in_use())
        finally:
            self._waiting_writers -= 1
        self._writer = thread

    def _writable(self) -> bool:
        return self._conn is not None and not self._conn_read_only

    def _read_only_in_use(self) -> bool:
        return self._conn is not None and self._conn_read_only

    def _leave(self, thread: int, slot: int, cursor: duckdb.DuckDBPyConnection) -> None:
        with self._turn:
            with suppress(duckdb.Error):
                cursor.close()
            held = self._held[thread]
            held[slot] -= 1
            self._users -= 1
            self._forget(thread, held)

    def _forget(self, thread: int, held: list[int]) -> None:
        """Give back the turn and the connection as far as nobody holds them any more."""
        if not held[1] and self._writer == thread:
            self._writer = None
        if not any(held):
            self._held.pop(thread, None)
        if not self._users and self._conn is not None:
            self._conn.close()
            self._conn = None
        self._turn.notify_all()


def _connect(path: str, read_only: bool, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _held_elsewhere(exc) or time.monotonic() > deadline:
                raise
            time.sleep(OPEN_RETRY_S)


def _held_elsewhere(exc: duckdb.Error) -> bool:
    """Another process has the file lock, or a connection here has the file in the other mode."""
    message = str(exc).lower()
    return "lock" in message or "different configuration" in message


_owners: dict[str, _Owner] = {}
_owners_lock = threading.Lock()


def _owner_of(path: Path) -> _Owner:
    name = str(path)
    key = name if name.startswith(":memory:") else str(Path(path).resolve())
    with _owners_lock:
        owner = _owners.get(key)
        if owner is None:
            owner = _owners[key] = _Owner(key)
        return owner


def _forget_owners_in_child() -> None:
    """A forked child starts with no owners: the parent's connections and turns are not its."""
    global _owners_lock
    _owners.clear()
    _owners_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_owners_in_child)
