"""Warehouse operations on a DuckDB connection, kept free of Dagster so they test alone.

A table is replaced in one transaction, so readers see the old rows or the new ones, never a
half-written table, and a failed load leaves the previous good table in place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
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


@contextmanager
def open_warehouse(
    path: Path, read_only: bool = False, wait_seconds: float = 15.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for command-line use, waiting while another process holds the file lock
    (Dagster runs keep their connections short, so the wait is brief)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            conn = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield conn
    finally:
        conn.close()
