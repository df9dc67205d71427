"""Moving the `champion` alias, and proving the move: a promotion or rollback only stands
once the LLM service serves the new version.

The alias is what every process serves, so it moves first and the service is asked to serve
it at once (transformers: an adapter swap; vLLM server: load the new adapter, then unload the
old). When the new adapter does not serve, the alias goes back to where it was: the previous
champion never stopped serving (the client loads before it unloads), and the registry again
says so. Every decision, refusals included, is a row of the `promotions` table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb

from dagster_platform.finetune.gate import Decision
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import table_exists
from dagster_platform.llm.registry import CHAMPION, AdapterRegistry
from dagster_platform.llm.service import LLMService

log = get_logger(__name__)

TABLE = "promotions"
Action = Literal["promoted", "refused", "rolled_back", "rollback"]
ConnectionFactory = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    promotion_id VARCHAR PRIMARY KEY,
    decided_at TIMESTAMPTZ NOT NULL,
    registered_model VARCHAR NOT NULL,
    action VARCHAR NOT NULL,          -- promoted | refused | rolled_back | rollback
    challenger_version VARCHAR,       -- the version that was to take champion
    champion_before VARCHAR,          -- NULL: the base model served
    champion_after VARCHAR,
    reasons JSON,                     -- [text]
    metrics JSON,                     -- {{candidate: {{metric: value}}}}
    actor VARCHAR NOT NULL,
    run_id VARCHAR                    -- the Dagster run, when one decided
)
"""


class RollbackError(RuntimeError):
    """There is nothing to roll back to, or the version asked for does not exist."""


@dataclass(frozen=True)
class Promotion:
    promotion_id: str
    decided_at: datetime
    registered_model: str
    action: Action
    challenger_version: str | None
    champion_before: str | None
    champion_after: str | None
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    actor: str = ""
    run_id: str | None = None
    served: str | None = None  # the service's label afterwards; not stored

    @property
    def ok(self) -> bool:
        """The change asked for happened (a refusal is a correct outcome too)."""
        return self.action in ("promoted", "refused", "rollback")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decided_at": self.decided_at.isoformat()}


def ensure_table(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(DDL)


def _record(conn_factory: ConnectionFactory, row: Promotion) -> Promotion:
    with conn_factory() as conn:
        ensure_table(conn)
        conn.execute(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row.promotion_id,
                row.decided_at,
                row.registered_model,
                row.action,
                row.challenger_version,
                row.champion_before,
                row.champion_after,
                json.dumps(row.reasons, ensure_ascii=False),
                json.dumps(row.metrics),
                row.actor,
                row.run_id,
            ],
        )
    log.info(
        "adapter promotion recorded",
        extra={
            "action": row.action,
            "challenger_version": row.challenger_version,
            "champion_after": row.champion_after,
        },
    )
    return row


def history(conn: duckdb.DuckDBPyConnection, limit: int = 20) -> list[Promotion]:
    """The latest decisions, newest first (empty before the first)."""
    if not table_exists(conn, TABLE):
        return []
    rows = conn.execute(
        f"SELECT * FROM {TABLE} ORDER BY decided_at DESC, promotion_id DESC LIMIT ?", [limit]
    ).fetchall()
    columns = [d[0] for d in conn.description]
    found = []
    for values in rows:
        row = dict(zip(columns, values, strict=True))
        row["reasons"] = json.loads(row["reasons"] or "[]")
        row["metrics"] = json.loads(row["metrics"] or "{}")
        found.append(Promotion(**row))
    return found


def _serves(service: LLMService, version: str | None) -> tuple[bool, str]:
    """Ask the service to serve the champion now; whether it serves `version` (None: base)."""
    served = service.refresh(force=True)
    now = served.adapter.version if served.adapter is not None else None
    if service.warning:
        return False, service.warning
    if now != version:
        return False, f"the service serves {served.label}, not v{version}"
    return True, served.label


def _move(
    registry: AdapterRegistry, service: LLMService, to: str | None, back: str | None
) -> tuple[bool, str]:
    """Point `champion` at `to` (None: remove it) and verify; on failure point it back."""
    if to is None:
        registry.delete_alias(CHAMPION)
    else:
        registry.set_alias(CHAMPION, to)
    ok, detail = _serves(service, to)
    if ok:
        return True, detail
    if back is None:
        registry.delete_alias(CHAMPION)
    else:
        registry.set_alias(CHAMPION, back)
    restored = service.refresh(force=True)
    return False, f"{detail}; champion restored, serving {restored.label}"


def _label(version: str | None) -> str:
    return "the base model" if version is None else f"v{version}"


def promote(
    registry: AdapterRegistry,
    decision: Decision,
    challenger_version: str,
    service: LLMService,
    conn_factory: ConnectionFactory,
    actor: str,
    run_id: str | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
) -> Promotion:
    """Apply the gate's decision: a refusal is only recorded; a promotion moves `champion`,
    serves it, and is undone (`rolled_back`) when the new adapter does not serve. `metrics`
    (candidate name -> metrics) goes into the row; the challenger's also become `metric.*`
    tags of its version, which `adapters list` shows."""
    registry.get(challenger_version)  # a clear error for a version that does not exist
    current = registry.by_alias(CHAMPION)
    before = current.version if current is not None else None
    reasons = list(decision.reasons)
    after = before
    if not decision.promote:
        action: Action = "refused"
    else:
        ok, detail = _move(registry, service, challenger_version, before)
        if ok:
            action, after = "promoted", challenger_version
        else:
            action = "rolled_back"
            reasons.append(f"v{challenger_version} did not serve: {detail}")
    recorded = _record(
        conn_factory,
        Promotion(
            promotion_id=uuid.uuid4().hex[:16],
            decided_at=datetime.now(UTC),
            registered_model=registry.registered_model,
            action=action,
            challenger_version=challenger_version,
            champion_before=before,
            champion_after=after,
            reasons=reasons,
            metrics=metrics or {},
            actor=actor,
            run_id=run_id,
            served=service.client.served.label,
        ),
    )
    registry.set_tags(
        challenger_version,
        {"gate": action}
        | {
            f"metric.{name}": str(value)
            for name, value in (metrics or {}).get("challenger", {}).items()
        },
    )
    return recorded


def previous_champion(conn: duckdb.DuckDBPyConnection, current: str) -> str | None:
    """The champion before `current`, from the row that made `current` the champion."""
    if table_exists(conn, TABLE):
        row = conn.execute(
            f"SELECT champion_before FROM {TABLE} WHERE action IN ('promoted', 'rollback') "
            "AND champion_after = ? ORDER BY decided_at DESC LIMIT 1",
            [current],
        ).fetchone()
        if row is not None:
            return row[0]
    raise RollbackError(
        f"no promotion made v{current} the champion, so there is no previous one on record: "
        "name the version to go back to (--to VERSION)"
    )


def rollback(
    registry: AdapterRegistry,
    service: LLMService,
    conn_factory: ConnectionFactory,
    actor: str,
    to_version: str | None = None,
) -> Promotion:
    """Put the previous champion back (or `to_version`), verified like a promotion; when it
    does not serve, the current champion stays and the row says `rolled_back`."""
    current = registry.by_alias(CHAMPION)
    before = current.version if current is not None else None
    if to_version is not None:
        target: str | None = registry.get(to_version).version
    elif before is None:
        raise RollbackError("there is no champion to roll back (the base model serves)")
    else:
        with conn_factory() as conn:
            target = previous_champion(conn, before)
    if target == before:
        raise RollbackError(f"{_label(target)} is the champion already")
    ok, detail = _move(registry, service, target, before)
    reason = f"rollback from {_label(before)} to {_label(target)} by {actor}"
    return _record(
        conn_factory,
        Promotion(
            promotion_id=uuid.uuid4().hex[:16],
            decided_at=datetime.now(UTC),
            registered_model=registry.registered_model,
            action="rollback" if ok else "rolled_back",
            challenger_version=target,
            champion_before=before,
            champion_after=target if ok else before,
            reasons=[reason] if ok else [reason, f"{_label(target)} did not serve: {detail}"],
            actor=actor,
            served=service.client.served.label,
        ),
    )
