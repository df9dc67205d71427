"""Rollups of landed events, refreshed incrementally.

Each refresh looks only at rows landed since its last watermark (`landed_at`), recomputes the
buckets (or jobs) those rows touch, and moves the watermark, all in one transaction: late
events are folded into the right bucket and nothing is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

WATERMARKS = "rollup_watermarks"
NEW_ROWS = "landed_at > coalesce($lower::TIMESTAMPTZ, '-infinity') AND landed_at <= $upper"


@dataclass(frozen=True)
class Rollup:
    name: str
    source: str
    key_columns: tuple[str, ...]  # what identifies a row of the rollup besides its bucket
    create: str
    refresh: str  # SELECT producing the rows of the affected keys (joined on `_affected`)
    affected: str  # SELECT DISTINCT keys of rows landed in (lower, upper]


def _utilisation(name: str, width: str, key: str, extra_ddl: str, extra_select: str) -> Rollup:
    bucket = f"time_bucket(INTERVAL '{width}', ts)"
    return Rollup(
        name=name,
        source="host_metrics",
        key_columns=("bucket", key),
        create=(
            f"CREATE TABLE IF NOT EXISTS {name} (bucket TIMESTAMPTZ NOT NULL, "
            f"{key} VARCHAR NOT NULL, {extra_ddl}, samples BIGINT, cpu_avg DOUBLE, "
            "cpu_max DOUBLE, memory_avg DOUBLE, memory_max DOUBLE, disk_max DOUBLE, "
            f"PRIMARY KEY (bucket, {key}))"
        ),
        affected=(f"SELECT DISTINCT {bucket} AS bucket, {key} FROM host_metrics WHERE {NEW_ROWS}"),
        refresh=(
            f"SELECT {bucket} AS bucket, m.{key}, {extra_select}, count(*), avg(cpu_pct), "
            "max(cpu_pct), avg(memory_pct), max(memory_pct), max(disk_pct) FROM host_metrics m "
            f"JOIN _affected a ON a.bucket = {bucket} AND a.{key} = m.{key} GROUP BY ALL"
        ),
    )


def _per_host(name: str, width: str) -> Rollup:
    return _utilisation(name, width, "host_id", "cluster_id VARCHAR", "any_value(m.cluster_id)")


def _per_cluster(name: str, width: str) -> Rollup:
    return _utilisation(name, width, "cluster_id", "hosts BIGINT", "count(DISTINCT m.host_id)")


ROLLUPS: tuple[Rollup, ...] = (
    _per_host("host_utilization_1m", "1 minute"),
    _per_host("host_utilization_1h", "1 hour"),
    _per_cluster("cluster_utilization_1m", "1 minute"),
    _per_cluster("cluster_utilization_1h", "1 hour"),
    Rollup(
        name="spark_job_state",
        source="spark_job_events",
        key_columns=("application_id",),
        create=(
            "CREATE TABLE IF NOT EXISTS spark_job_state (application_id VARCHAR PRIMARY KEY, "
            'cluster_id VARCHAR, name VARCHAR, queue VARCHAR, "user" VARCHAR, state VARCHAR, '
            "vcores BIGINT, memory_gb DOUBLE, cpu_share_pct DOUBLE, driver_host VARCHAR, "
            "first_seen TIMESTAMPTZ, last_event_at TIMESTAMPTZ, events BIGINT)"
        ),
        affected=(f"SELECT DISTINCT application_id FROM spark_job_events WHERE {NEW_ROWS}"),
        refresh=(
            "SELECT e.application_id, "
            "arg_max(cluster_id, (ts, kafka_offset)), arg_max(name, (ts, kafka_offset)), "
            'arg_max(queue, (ts, kafka_offset)), arg_max("user", (ts, kafka_offset)), '
            "arg_max(state, (ts, kafka_offset)), arg_max(vcores, (ts, kafka_offset)), "
            "arg_max(memory_gb, (ts, kafka_offset)), arg_max(cpu_share_pct, (ts, kafka_offset)), "
            "arg_max(driver_host, (ts, kafka_offset)), min(ts), max(ts), count(*) "
            "FROM spark_job_events e JOIN _affected a USING (application_id) GROUP BY ALL"
        ),
    ),
)


def refresh(conn: duckdb.DuckDBPyConnection, spec: Rollup) -> dict[str, int]:
    """Recompute what changed since the last refresh; return keys touched and rows in total."""
    conn.execute(spec.create)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {WATERMARKS} (rollup VARCHAR PRIMARY KEY, "
        "landed_at TIMESTAMPTZ NOT NULL)"
    )
    conn.execute("BEGIN TRANSACTION")
    try:
        (lower,) = conn.execute(
            f"SELECT max(landed_at) FROM {WATERMARKS} WHERE rollup = ?", [spec.name]
        ).fetchone()
        (upper,) = conn.execute(f"SELECT max(landed_at) FROM {spec.source}").fetchone()
        touched = 0
        if upper is not None and (lower is None or upper > lower):
            conn.execute(
                f"CREATE OR REPLACE TEMP TABLE _affected AS {spec.affected}",
                {"lower": lower, "upper": upper},
            )
            (touched,) = conn.execute("SELECT count(*) FROM _affected").fetchone()
            keys = " AND ".join(f"t.{k} = a.{k}" for k in spec.key_columns)
            conn.execute(f"DELETE FROM {spec.name} t USING _affected a WHERE {keys}")
            conn.execute(f"INSERT INTO {spec.name} {spec.refresh}")
            conn.execute(f"INSERT OR REPLACE INTO {WATERMARKS} VALUES (?, ?)", [spec.name, upper])
            conn.execute("DROP TABLE _affected")
        (rows,) = conn.execute(f"SELECT count(*) FROM {spec.name}").fetchone()
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return {"touched": int(touched), "rows": int(rows)}
