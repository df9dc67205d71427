"""Warehouse tables for landed events, derived from the event schemas.

Every landed row keeps its Kafka coordinates. Where a partition stopped is read from the rows
themselves (and from `stream_offsets`, which also counts what was landed and dead-lettered), so
a run resumes after the last stored message even if the offsets were lost. The coordinates
carry no key index: it would cost as much as the insert and grow in memory with the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import duckdb
import msgspec
import pyarrow as pa

from dagster_platform.kafka.events import STREAM_FAMILIES, EventTable, StreamFamily
from dagster_platform.lib.warehouse import quote, registered, table_exists

DEAD_LETTER_TABLE = "dead_letter_events"
OFFSETS_TABLE = "stream_offsets"

_SQL_TYPES: dict[type, str] = {
    msgspec.inspect.StrType: "VARCHAR",
    msgspec.inspect.FloatType: "DOUBLE",
    msgspec.inspect.IntType: "BIGINT",
    msgspec.inspect.BoolType: "BOOLEAN",
    msgspec.inspect.DateTimeType: "TIMESTAMPTZ",
    msgspec.inspect.LiteralType: "VARCHAR",
}


def _sql_type(info: msgspec.inspect.Type) -> str:
    if isinstance(info, msgspec.inspect.UnionType):  # `X | None`
        (info,) = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return _SQL_TYPES[type(info)]


def event_columns(table: EventTable) -> list[tuple[str, str]]:
    """(column, SQL type) of an event table, in the struct's field order."""
    info = msgspec.inspect.type_info(table.event_type)
    return [(field.name, _sql_type(field.type)) for field in info.fields]


def _typed_select(table: EventTable, source: str) -> str:
    """SELECT of `source` (kafka_partition, kafka_offset, payload) typing the JSON payload as
    the event's columns, defaults included. Payloads were validated by msgspec first, so every
    cast here succeeds."""
    info = msgspec.inspect.type_info(table.event_type)
    shape = json.dumps(dict(event_columns(table)))
    columns = []
    for field in info.fields:
        value = f"j.{quote(field.name)}"
        if field.default not in (msgspec.NODEFAULT, None):
            value = f"coalesce({value}, {field.default!r})"
        columns.append(f"{value} AS {quote(field.name)}")
    return (
        f"SELECT kafka_partition, kafka_offset, {', '.join(columns)} FROM "
        f"(SELECT *, json_transform(payload, '{shape}') AS j FROM {source})"
    )


def insert_events(
    conn: duckdb.DuckDBPyConnection,
    table: EventTable,
    topic: str,
    batch: pa.Table | pa.RecordBatchReader | None,
) -> int:
    """Insert validated payloads (kafka_partition, kafka_offset, payload) as typed rows;
    return how many were inserted. A reader is inserted as DuckDB pulls its batches."""
    if batch is None or (isinstance(batch, pa.Table) and batch.num_rows == 0):
        return 0
    names = ", ".join(quote(name) for name, _ in event_columns(table))
    with registered(conn, "_payloads", batch):
        (inserted,) = conn.execute(
            f"INSERT INTO {quote(table.table)} (kafka_topic, kafka_partition, "
            f"kafka_offset, {names}) SELECT $topic, * FROM ({_typed_select(table, '_payloads')})",
            {"topic": topic},
        ).fetchone()
    return int(inserted)


def ensure_tables(conn: duckdb.DuckDBPyConnection, family: StreamFamily) -> None:
    """Create the family's tables, and add the columns that a compatible change of a schema
    (a new field with a default) brought to a table created before it."""
    for table in family.tables:
        columns = ", ".join(f"{quote(name)} {sql}" for name, sql in event_columns(table))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quote(table.table)} ("
            "kafka_topic VARCHAR NOT NULL, kafka_partition INTEGER NOT NULL, "
            f"kafka_offset BIGINT NOT NULL, {columns}, "
            "landed_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
        )
        _add_missing_columns(conn, table)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} ("
        "kafka_topic VARCHAR NOT NULL, kafka_partition INTEGER NOT NULL, "
        "kafka_offset BIGINT NOT NULL, kafka_key BLOB, kafka_timestamp TIMESTAMPTZ, "
        "reason VARCHAR NOT NULL, error VARCHAR NOT NULL, size_bytes BIGINT NOT NULL, "
        "payload BLOB, landed_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
    )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} ("
        "consumer_group VARCHAR NOT NULL, kafka_topic VARCHAR NOT NULL, "
        "kafka_partition INTEGER NOT NULL, next_offset BIGINT NOT NULL, "
        "messages_landed BIGINT NOT NULL DEFAULT 0, messages_dead BIGINT NOT NULL DEFAULT 0, "
        "updated_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, "
        "PRIMARY KEY (consumer_group, kafka_topic, kafka_partition))"
    )


def _add_missing_columns(conn: duckdb.DuckDBPyConnection, table: EventTable) -> None:
    """One catalog read per table; an ALTER only where a column is missing, so the landing
    runs of every family do not take catalog writes on each run."""
    existing = {
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            [table.table],
        ).fetchall()
    }
    for name, sql in event_columns(table):
        if name not in existing:
            conn.execute(
                f"ALTER TABLE {quote(table.table)} ADD COLUMN IF NOT EXISTS {quote(name)} {sql}"
            )


def ensure_all_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Every landing table, for readers that may run before any stream has landed."""
    for family in STREAM_FAMILIES:
        ensure_tables(conn, family)


def read_offsets(conn: duckdb.DuckDBPyConnection, family: StreamFamily) -> dict[int, int]:
    """Partition → the next offset to land: past the last message stored, or past what
    `stream_offsets` recorded, whichever is further."""
    stored = " UNION ALL ".join(
        f"SELECT kafka_partition, max(kafka_offset) + 1 AS next_offset FROM {quote(t)} "
        "WHERE kafka_topic = $topic GROUP BY 1"
        for t in [*(table.table for table in family.tables), DEAD_LETTER_TABLE]
    )
    rows = conn.execute(
        f"SELECT kafka_partition, max(next_offset) FROM ({stored} UNION ALL "
        f"SELECT kafka_partition, next_offset FROM {OFFSETS_TABLE} "
        "WHERE consumer_group = $group AND kafka_topic = $topic) GROUP BY 1",
        {"topic": family.topic, "group": family.consumer_group},
    ).fetchall()
    return {int(partition): int(offset) for partition, offset in rows}


def split_unreferenced(
    conn: duckdb.DuckDBPyConnection, table: EventTable, topic: str, batch: pa.Table | None
) -> tuple[pa.Table | None, pa.Table | None]:
    """Split validated payloads (kafka_partition, kafka_offset, payload) of a table with a
    reference into (those whose referenced row exists, dead-letter rows for the others).

    A semi and an anti join over the registered batch, so every row is in exactly one of the
    two; a referenced table that does not exist yet refers to nothing. Dead letters carry no
    Kafka key or timestamp: the payload holds the event whole.
    """
    reference = table.reference
    if reference is None or batch is None or batch.num_rows == 0:
        return batch, None
    exists = table_exists(conn, reference.table)
    join = (
        f"{quote(reference.table)} r "
        f"ON r.{quote(reference.key)} = json_extract_string(p.payload, $path)"
    )
    why = f"not found in {reference.table}" if exists else f"no {reference.table} table yet"
    params = {"path": f"$.{reference.column}"}
    with registered(conn, "_referring", batch):
        kept = (
            conn.sql(
                f"SELECT p.kafka_partition, p.kafka_offset, p.payload FROM _referring p "
                f"SEMI JOIN {join}",
                params=params,
            ).to_arrow_table()
            if exists
            else None
        )
        dead = conn.sql(
            "SELECT $topic AS kafka_topic, p.kafka_partition, p.kafka_offset, "
            "NULL::BLOB AS kafka_key, NULL::TIMESTAMPTZ AS kafka_timestamp, $reason AS reason, "
            "printf($error, json_extract_string(p.payload, $path)) AS error, "
            "strlen(p.payload)::BIGINT AS size_bytes, encode(p.payload) AS payload "
            f"FROM _referring p {f'ANTI JOIN {join}' if exists else ''}",
            params={
                **params,
                "topic": topic,
                "reason": reference.reason,
                "error": f"{reference.column} '%s': {why}",
            },
        ).to_arrow_table()
    return kept, dead


def running_counts(conn: duckdb.DuckDBPyConnection, table: EventTable) -> dict[str, int]:
    """The table's declared running counts (all 0 before anything landed)."""
    if not table.running_counts:
        return {}
    if not table_exists(conn, table.table):
        return {name: 0 for name, _ in table.running_counts}
    filters = ", ".join(f"count(*) FILTER (WHERE {where})" for _, where in table.running_counts)
    values = conn.execute(f"SELECT {filters} FROM {quote(table.table)}").fetchall()[0]
    return {name: int(v) for (name, _), v in zip(table.running_counts, values, strict=True)}


def insert_rows(conn: duckdb.DuckDBPyConnection, table: str, batch: pa.Table | None) -> int:
    """Insert an Arrow table's rows by column name; return how many were inserted."""
    if batch is None or batch.num_rows == 0:
        return 0
    columns = ", ".join(quote(name) for name in batch.column_names)
    with registered(conn, "_batch", batch):
        (inserted,) = conn.execute(
            f"INSERT INTO {quote(table)} ({columns}) SELECT {columns} FROM _batch"
        ).fetchone()
    return int(inserted)


def advance_offsets(
    conn: duckdb.DuckDBPyConnection,
    family: StreamFamily,
    progress: Iterable[tuple[int, int, int, int]],
) -> None:
    """Record (partition, next offset, landed, dead) — never moving an offset backwards."""
    for partition, next_offset, landed, dead in progress:
        conn.execute(
            f"INSERT INTO {OFFSETS_TABLE} AS o (consumer_group, kafka_topic, kafka_partition, "
            "next_offset, messages_landed, messages_dead) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET next_offset = greatest(o.next_offset, "
            "excluded.next_offset), messages_landed = o.messages_landed + "
            "excluded.messages_landed, messages_dead = o.messages_dead + excluded.messages_dead, "
            "updated_at = now()",
            [family.consumer_group, family.topic, partition, next_offset, landed, dead],
        )


def unreconciled(conn: duckdb.DuckDBPyConnection, family: StreamFamily) -> list[str]:
    """Partitions where the rows stored (landed + dead-lettered) differ from the messages the
    offsets table counted as consumed; empty when nothing was dropped or doubled."""
    stored = " UNION ALL ".join(
        f"SELECT kafka_partition, kafka_offset FROM {quote(t)} WHERE kafka_topic = $topic"
        for t in [*(table.table for table in family.tables), DEAD_LETTER_TABLE]
    )
    rows = conn.execute(
        f"WITH stored AS ({stored}), counted AS (SELECT kafka_partition, count(*) AS n, "
        "count(DISTINCT kafka_offset) AS distinct_n FROM stored GROUP BY 1) "
        "SELECT o.kafka_partition, o.messages_landed + o.messages_dead, "
        "coalesce(c.n, 0), coalesce(c.distinct_n, 0) "
        f"FROM {OFFSETS_TABLE} o LEFT JOIN counted c USING (kafka_partition) "
        "WHERE o.consumer_group = $group AND o.kafka_topic = $topic ORDER BY 1",
        {"topic": family.topic, "group": family.consumer_group},
    ).fetchall()
    return [
        f"{family.topic}/{partition}: {consumed} consumed, {stored_n} stored "
        f"({distinct_n} distinct offsets)"
        for partition, consumed, stored_n, distinct_n in rows
        if not consumed == stored_n == distinct_n
    ]


def dead_letter_summary(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(topic, reason, count) over the whole dead-letter table."""
    return conn.execute(
        f"SELECT kafka_topic, reason, count(*) FROM {DEAD_LETTER_TABLE} GROUP BY ALL ORDER BY ALL"
    ).fetchall()
