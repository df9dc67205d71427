"""What the console shows, read from where the platform keeps it: the action log with each
action's preconditions and who may decide it, the feedback the loop has not used yet, the
latest alerts and their reports, and the loop's promotions and last evaluation.

Every read is short and read-only, and a part that cannot be read (no warehouse yet, a writer
holding the lock elsewhere, no registry) says so as text instead of failing the page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from dagster_platform.finetune import promotion
from dagster_platform.finetune.artifacts import finetune_dir
from dagster_platform.finetune.triggers import (
    USABLE_FEEDBACK_TOTAL,
    FeedbackBacklog,
    usable_feedback_total,
)
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import open_warehouse, table_exists
from dagster_platform.ontology.actions import ACTION_LOG, ActionStatus, list_actions
from dagster_platform.ontology.loader import LoadedOntology
from dagster_platform.ontology.objects import read_object
from dagster_platform.ontology.roles import Roles
from dagster_platform.settings import Settings

log = get_logger(__name__)

READ_WAIT_S = 3.0
ACTION_ID = re.compile(r"\bact-[0-9a-f]{12}\b")


class Unavailable(RuntimeError):
    """A part of the page cannot be read now; the message says why, for the page to show."""


def _reading(settings: Settings):
    if not settings.warehouse_path.exists():
        raise Unavailable(
            f"no warehouse at {settings.warehouse_path}: materialize the ingestion group"
        )
    return open_warehouse(settings.warehouse_path, read_only=True, wait_seconds=READ_WAIT_S)


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionView:
    """One action as a card shows it, for one user: may they decide it, and if not, why."""

    status: ActionStatus
    preconditions: list[str]
    approver_role: str
    target_state: str | None
    can_decide: bool
    why_not: str | None

    @property
    def action_id(self) -> str:
        return self.status.action_id

    @property
    def open(self) -> bool:
        return self.status.status == "proposed"

    @property
    def retryable(self) -> bool:
        return self.status.status == "failed" and bool(self.status.retryable)


def action_view(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    roles: Roles,
    status: ActionStatus,
    user: str,
) -> ActionView:
    declared = loaded.ontology.action_types.get(status.action_type)
    role = declared.approver_role if declared else "?"
    target = read_object(conn, loaded, status.target_type, status.target_key) or {}
    state = target.get("state")
    can = roles.has(user, role)
    return ActionView(
        status,
        [c.describe() for c in declared.preconditions] if declared else [],
        role,
        None if state is None else str(state),
        can,
        None if can else f"{user} does not hold the role {role!r} that {status.action_type} needs",
    )


def actions_for(
    settings: Settings,
    loaded: LoadedOntology,
    roles: Roles,
    user: str,
    action_ids: list[str] | None = None,
    recent: int = 8,
) -> list[ActionView]:
    """Open proposals first, then the latest outcomes; only `action_ids` when given."""
    with _reading(settings) as conn:
        if not table_exists(conn, ACTION_LOG):  # nothing proposed yet; reading creates nothing
            return []
        found = list_actions(conn)
        if action_ids is not None:
            wanted = set(action_ids)
            found = [a for a in found if a.action_id in wanted]
        else:
            found = [a for a in found if a.status == "proposed"] + [
                a for a in found if a.status != "proposed"
            ][:recent]
        return [action_view(conn, loaded, roles, a, user) for a in found]


# --- feedback and the loop -------------------------------------------------------------------


@dataclass(frozen=True)
class LoopSchedule:
    backlog: FeedbackBacklog
    threshold: int
    cron: str
    timezone: str

    def describe(self) -> str:
        seen = (
            "no dataset built yet"
            if self.backlog.in_latest_dataset is None
            else f"{self.backlog.in_latest_dataset} in the last dataset"
        )
        left = max(self.threshold - self.backlog.new, 0)
        soon = (
            "the loop is due now (the new_feedback sensor requests it)"
            if left == 0
            else f"{left} more start the loop at once"
        )
        return (
            f"{self.backlog.new} usable ratings since the last dataset ({seen}); {soon}, "
            f"otherwise it runs on its nightly schedule, cron {self.cron} ({self.timezone})"
        )


def _dataset_total(settings: Settings) -> int | None:
    """The usable-feedback total the latest `sft_dataset` recorded in the Dagster instance (as
    the trigger sensor reads it); None when there is no instance or no dataset yet."""
    if not (settings.dagster_home / "dagster.yaml").is_file():
        return None
    import dagster as dg

    try:
        with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey("sft_dataset"))
    except Exception as exc:  # an instance being migrated or locked reads as unknown
        log.warning("dagster instance unreadable", extra={"error": str(exc)})
        return None
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(USABLE_FEEDBACK_TOTAL)
    return None if value is None else int(value.value)


def loop_schedule(settings: Settings) -> LoopSchedule:
    with _reading(settings) as conn:
        landed = usable_feedback_total(conn)
    return LoopSchedule(
        FeedbackBacklog(landed, _dataset_total(settings)),
        settings.finetune_feedback_threshold,
        settings.finetune_cron,
        settings.finetune_timezone,
    )


@dataclass
class LoopState:
    champion: str
    promotions: list[promotion.Promotion] = field(default_factory=list)
    evaluation_markdown: str | None = None
    evaluation_chart: bytes | None = None
    evaluation_name: str | None = None


def _champion(settings: Settings) -> str:
    from dagster_platform.llm.registry import CHAMPION, AdapterRegistry

    try:
        found = AdapterRegistry(
            settings.resolved_mlflow_tracking_uri, settings.registered_model
        ).by_alias(CHAMPION)
    except Exception as exc:  # MLflow unreachable or not created yet
        return f"unknown (the registry did not answer: {exc})"
    if found is None:
        return f"none: {settings.registered_model} has no @{CHAMPION}, the base model serves"
    return f"{settings.registered_model} v{found.version} (@{CHAMPION})"


def loop_state(settings: Settings) -> LoopState:
    from dagster_platform.finetune.evaluation import EvaluationReport

    state = LoopState(_champion(settings))
    with _reading(settings) as conn:
        state.promotions = promotion.history(conn)
    evaluations = sorted(
        (finetune_dir(settings.state_dir) / "evaluations").glob("v*.json"),
        key=lambda p: p.stat().st_mtime,
    )
    if evaluations:
        latest = evaluations[-1]
        report = EvaluationReport.from_dict(json.loads(latest.read_text(encoding="utf-8")))
        state.evaluation_name = latest.stem
        state.evaluation_markdown = report.markdown()
        state.evaluation_chart = report.chart_png()
    return state


# --- incidents -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    alert: dict[str, Any]
    report: str | None
    action_ids: list[str]

    @property
    def alert_id(self) -> str:
        return str(self.alert["alert_id"])


def reports_dir(settings: Settings) -> Path:
    return settings.state_dir / "reports" / "incidents"


def latest_incidents(settings: Settings, limit: int = 20) -> list[Incident]:
    """The latest alerts, each with its report (written by the `incident_reports` asset) and
    the actions the report proposed."""
    with _reading(settings) as conn:
        if not table_exists(conn, "alert_events"):
            return []
        cursor = conn.execute(
            "SELECT alert_id, ts, severity, rule, cluster_id, host_id, metric, value, threshold, "
            "message FROM alert_events QUALIFY row_number() OVER (PARTITION BY alert_id "
            "ORDER BY kafka_offset DESC) = 1 ORDER BY ts DESC LIMIT ?",
            [limit],
        )
        columns = [d[0] for d in cursor.description]
        alerts = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    found = []
    for alert in alerts:
        path = reports_dir(settings) / f"{alert['alert_id']}.md"
        report = path.read_text(encoding="utf-8") if path.is_file() else None
        found.append(Incident(alert, report, sorted(set(ACTION_ID.findall(report or "")))))
    return found


def format_time(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S %Z}".strip()
