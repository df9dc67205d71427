"""Every answer, as a row: what was asked, how it was routed, which tools ran with which
arguments, what grounded it, what the model (and adapter version) said, and how long it took.

The rows are the memory of a session (a follow-up resolves against the previous turn's
subjects, "did it drop?" against the session's proposals) and the raw material of the
fine-tuning loop (rated answers become training data).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

TABLE = "interactions"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    interaction_id VARCHAR PRIMARY KEY,
    session_id VARCHAR NOT NULL,
    asked_at TIMESTAMPTZ NOT NULL,
    question VARCHAR NOT NULL,
    status VARCHAR NOT NULL,          -- answered | degraded | rejected | failed
    route VARCHAR,
    route_source VARCHAR,             -- llm | keywords | embedding
    route_detail JSON,
    tool_calls JSON,                  -- [{{tool, arguments, ok, error, planned_by}}]
    contexts JSON,                    -- [{{id, source, citation, text}}]
    subjects JSON,                    -- ids the answer is about, in rank order
    proposed_actions JSON,            -- action ids awaiting approval
    answer VARCHAR,
    language VARCHAR,                 -- ko | en | other (answered in English)
    headline VARCHAR,                 -- the first paragraph shown
    headline_source VARCHAR,          -- composed | model
    model_headline VARCHAR,           -- what the model wrote, shown or not
    headline_refused VARCHAR,         -- why the gate refused the model's headline
    evidence JSON,                    -- the facts the headline was written from
    model VARCHAR,
    adapter VARCHAR,
    adapter_version VARCHAR,
    backend VARCHAR,
    llm_error VARCHAR,
    error VARCHAR,
    latency_ms DOUBLE
)
"""

JSON_COLUMNS = (
    "route_detail",
    "tool_calls",
    "contexts",
    "subjects",
    "proposed_actions",
    "evidence",
)
# columns added after the table first shipped: an older warehouse gains them on first write
ADDED_COLUMNS = {
    "language": "VARCHAR",
    "headline": "VARCHAR",
    "headline_source": "VARCHAR",
    "model_headline": "VARCHAR",
    "headline_refused": "VARCHAR",
    "evidence": "JSON",
}


@dataclass
class Interaction:
    interaction_id: str
    session_id: str
    question: str
    status: str
    asked_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    route: str | None = None
    route_source: str | None = None
    route_detail: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    proposed_actions: list[str] = field(default_factory=list)
    answer: str | None = None
    language: str | None = None
    headline: str | None = None
    headline_source: str | None = None
    model_headline: str | None = None
    headline_refused: str | None = None
    evidence: list[str] = field(default_factory=list)
    model: str | None = None
    adapter: str | None = None
    adapter_version: str | None = None
    backend: str | None = None
    llm_error: str | None = None
    error: str | None = None
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["asked_at"] = self.asked_at.isoformat()
        return row


def ensure_table(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(DDL)
    for column, kind in ADDED_COLUMNS.items():
        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {column} {kind}")


def record(conn: duckdb.DuckDBPyConnection, interaction: Interaction) -> None:
    ensure_table(conn)
    row = asdict(interaction)
    for column in JSON_COLUMNS:
        row[column] = json.dumps(row[column], ensure_ascii=False, default=str)
    columns = list(row)
    conn.execute(
        f"INSERT INTO {TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [row[c] for c in columns],
    )


def _from_row(columns: list[str], values: tuple[Any, ...]) -> Interaction:
    row = dict(zip(columns, values, strict=True))
    for column in JSON_COLUMNS:
        empty: Any = {} if column == "route_detail" else []
        row[column] = json.loads(row[column]) if row[column] else empty
    return Interaction(**row)


def read(
    conn: duckdb.DuckDBPyConnection,
    *,
    session_id: str | None = None,
    interaction_id: str | None = None,
    limit: int = 100,
) -> list[Interaction]:
    """Newest first."""
    from dagster_platform.lib.warehouse import table_exists

    if not table_exists(conn, TABLE):
        return []
    where, params = [], []
    if session_id is not None:
        where.append("session_id = ?")
        params.append(session_id)
    if interaction_id is not None:
        where.append("interaction_id = ?")
        params.append(interaction_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    result = conn.execute(
        f"SELECT * FROM {TABLE} {clause} ORDER BY asked_at DESC LIMIT {int(limit)}", params
    )
    columns = [d[0] for d in result.description]
    return [_from_row(columns, values) for values in result.fetchall()]
