"""A root-cause report for one alert, written before anyone asks.

The same tools the agents use gather it: the alerting object's ontology neighbourhood, the
suspects the ontology's root-cause declaration ranks (Spark jobs by resource use), the
cluster's utilisation, similar past incidents with their resolutions and the runbooks. When
the alert is about CPU and a running job stands out, a kill of the top suspect is *proposed*;
it waits for a person with the required role, like every other action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagster_platform.agents.tools import Tool, ToolContext, ToolResult
from dagster_platform.agents.tools.data import PROPOSE_KILL, TOP_SPARK_JOBS, approve_command
from dagster_platform.agents.tools.guide import SEARCH_INCIDENTS, SEARCH_RUNBOOKS
from dagster_platform.agents.tools.infra import CLUSTER_UTILISATION, ONTOLOGY_NEIGHBOURS
from dagster_platform.lib.warehouse import open_warehouse, table_exists
from dagster_platform.ontology.query import NotFound, OntologyQuery

ALERTS_TABLE = "alert_events"


class AlertNotLanded(LookupError):
    """The alert is not in the warehouse yet (its landing run has not committed)."""


@dataclass
class IncidentReport:
    alert: dict[str, Any]
    markdown: str
    suspects: list[dict[str, Any]] = field(default_factory=list)
    proposed_actions: list[str] = field(default_factory=list)
    similar_incidents: list[str] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)


def read_alert(ctx: ToolContext, alert_id: str) -> dict[str, Any]:
    with open_warehouse(ctx.settings.warehouse_path, read_only=True) as conn:
        if not table_exists(conn, ALERTS_TABLE):
            raise AlertNotLanded(f"no {ALERTS_TABLE} table yet")
        cursor = conn.execute(
            f"SELECT * FROM {ALERTS_TABLE} WHERE alert_id = ? ORDER BY kafka_offset DESC LIMIT 1",
            [alert_id],
        )
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    if not rows:
        raise AlertNotLanded(f"alert {alert_id} has not landed in {ALERTS_TABLE}")
    return dict(zip(columns, rows[0], strict=True))


def _suspects(ctx: ToolContext, object_type: str, key: str) -> tuple[list[dict[str, Any]], str]:
    with open_warehouse(ctx.settings.warehouse_path, read_only=True) as conn:
        try:
            found = OntologyQuery(conn, ctx.ontology()).root_cause(object_type, key, limit=5)
        except (NotFound, ValueError) as exc:
            return [], str(exc)
    return [
        {"object": str(s.object), "title": s.object.title, "rank_value": s.rank_value,
         "path": " → ".join(s.path), "state": s.properties.get("state")}
        for s in found
    ], ""  # fmt: skip


def build_report(ctx: ToolContext, alert: dict[str, Any], propose: bool = True) -> IncidentReport:
    cluster, host = alert["cluster_id"], alert.get("host_id")
    start = ("host", host) if host else ("cluster", cluster)
    suspects, why_none = _suspects(ctx, *start)
    calls: list[tuple[Tool, dict[str, Any]]] = [
        (CLUSTER_UTILISATION, {"cluster_id": cluster}),
        (ONTOLOGY_NEIGHBOURS, {"object_type": start[0], "key": start[1]}),
        (TOP_SPARK_JOBS, {"n": 5, "cluster_id": cluster}),
        (SEARCH_INCIDENTS, {"query": f"{alert['rule']} {alert['message']}", "k": 3}),
        (SEARCH_RUNBOOKS, {"query": f"{alert['rule']} {alert['message']}", "k": 2}),
    ]
    results = [tool.call(ctx, arguments) for tool, arguments in calls]
    by_tool = {r.tool: r for r in results}
    report = IncidentReport(alert, "", suspects=suspects, results=results)

    running = [s for s in suspects if s["state"] in ("RUNNING", "ACCEPTED")]
    if propose and running and "cpu" in str(alert.get("metric", "")).lower():
        top = running[0]["object"].split(":", 1)[1]
        reason = (
            f"alert {alert['alert_id']}: {alert['rule']} on {start[0]} {start[1]} "
            f"({alert['metric']} {alert['value']} > {alert['threshold']}); top suspect"
        )
        proposal = PROPOSE_KILL.call(ctx, {"application_ids": [top], "reason": reason})
        results.append(proposal)
        report.proposed_actions = [
            row["action_id"] for row in proposal.rows if row.get("action_id")
        ]
    report.similar_incidents = by_tool[SEARCH_INCIDENTS.name].subjects
    report.markdown = render(alert, start, suspects, why_none, results, report.proposed_actions)
    return report


def _section(title: str, result: ToolResult | None) -> list[str]:
    lines = [f"## {title}"]
    if result is None:
        return lines
    if not result.ok:
        return [*lines, f"_Not available: {result.error}_"]
    lines += [f"- {fact}" for fact in result.facts] or ["- nothing found"]
    return lines


def render(
    alert: dict[str, Any],
    start: tuple[str, str],
    suspects: list[dict[str, Any]],
    why_none: str,
    results: list[ToolResult],
    proposed: list[str],
) -> str:
    by_tool = {r.tool: r for r in results}
    lines = [
        f"# Incident report: {alert['alert_id']}",
        "",
        f"**{alert['severity']}** `{alert['rule']}` on {start[0]} `{start[1]}` "
        f"(cluster `{alert['cluster_id']}`): {alert['metric']} = {alert['value']} "
        f"(threshold {alert['threshold']}) at {alert.get('ts')}.",
        "",
        f"> {alert['message']}",
        "",
        *_section("Cluster utilisation", by_tool.get(CLUSTER_UTILISATION.name)),
        "",
        *_section("Ontology neighbourhood", by_tool.get(ONTOLOGY_NEIGHBOURS.name)),
        "",
        "## Suspects (the ontology's root-cause ranking)",
    ]
    if suspects:
        lines += ["| suspect | state | rank value | path |", "|---|---|---|---|"]
        lines += [
            f"| {s['object']} {s['title'] or ''} | {s['state']} | {s['rank_value']} | {s['path']} |"
            for s in suspects
        ]
    else:
        lines.append(f"- none found{': ' + why_none if why_none else ''}")
    lines += ["", *_section("Top resource users on the cluster", by_tool.get(TOP_SPARK_JOBS.name))]
    lines += ["", "## Similar past incidents and their resolutions"]
    incidents = by_tool.get(SEARCH_INCIDENTS.name)
    if incidents is not None and incidents.ok and incidents.contexts:
        for context in incidents.contexts:
            lines.append(f"- **{context.citation or context.id}**: {context.text[:400].strip()}")
    else:
        lines.append("- none found")
    lines += ["", *_section("Runbooks", by_tool.get(SEARCH_RUNBOOKS.name))]
    lines += ["", "## Proposed actions (awaiting approval)"]
    lines += [
        f"- `{action_id}`: approve with `{approve_command(action_id)}`" for action_id in proposed
    ] or ["- none"]
    return "\n".join(lines) + "\n"
