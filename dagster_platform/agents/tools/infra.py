"""The infra agent's tools: cluster utilisation, hosts, and the ontology around them.

Utilisation comes from the landed metrics' latest minute where there is one and from the host
inventory's snapshot otherwise, and each fact names which, so that a frozen snapshot and a live
system are answered by the same tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

import duckdb
from pydantic import Field, field_validator

from dagster_platform.agents.tools.base import (
    Agent,
    ClusterId,
    Context,
    Findings,
    Tool,
    ToolContext,
    ToolFailure,
    _Arguments,
    _capacity,
    _minute,
    _num,
    _pct,
    _plain,
    _reading,
    _round,
    _rows,
    _text_filter,
    unknown_name,
)
from dagster_platform.lib.warehouse import key_values, table_exists
from dagster_platform.ontology.build import typed_select
from dagster_platform.ontology.query import OntologyQuery

# --- utilisation -----------------------------------------------------------------------------

LIVE = "latest minute"
SNAPSHOT = "inventory snapshot"

_LATEST = (
    "latest AS (SELECT cluster_id, max(bucket) AS bucket FROM cluster_utilization_1m "
    "WHERE $cluster IS NULL OR cluster_id = $cluster GROUP BY cluster_id)"
)
_CLUSTERS_SQL = (
    f"WITH {_LATEST} "
    "SELECT l.cluster_id, l.bucket, n.hosts, n.cpu_avg, n.cpu_max, n.memory_avg, n.memory_max, "
    "count(w.bucket) AS window_minutes, avg(w.cpu_avg) AS window_cpu, "
    "avg(w.memory_avg) AS window_memory "
    "FROM latest l JOIN cluster_utilization_1m n ON n.cluster_id = l.cluster_id "
    "AND n.bucket = l.bucket "
    "LEFT JOIN cluster_utilization_1m w ON w.cluster_id = l.cluster_id "
    "AND w.bucket >= l.bucket - to_minutes($minutes) AND w.bucket < l.bucket "
    "GROUP BY ALL ORDER BY n.cpu_avg DESC, l.cluster_id"
)
# Workers run the executors, so their mean is what the CPU alarm and operators call the
# cluster's utilisation; masters and edge nodes idling pull the all-host mean down.
_WORKERS_SQL = (
    f"WITH {_LATEST} "
    "SELECT u.cluster_id, avg(u.cpu_avg) FILTER (WHERE u.bucket = l.bucket), "
    "avg(u.memory_avg) FILTER (WHERE u.bucket = l.bucket), "
    "avg(u.cpu_avg) FILTER (WHERE u.bucket < l.bucket) "
    "FROM host_utilization_1m u JOIN latest l ON l.cluster_id = u.cluster_id "
    "JOIN hosts h ON h.host_id = u.host_id AND h.role = 'worker' "
    "WHERE u.bucket >= l.bucket - to_minutes($minutes) AND u.bucket <= l.bucket "
    "GROUP BY u.cluster_id"
)
_LIVE_HOSTS = (
    "SELECT host_id, max(bucket) AS bucket, arg_max(cpu_avg, bucket) AS cpu, "
    "arg_max(memory_avg, bucket) AS memory, arg_max(disk_max, bucket) AS disk "
    "FROM host_utilization_1m GROUP BY host_id"
)
_NO_LIVE_HOSTS = (
    "SELECT NULL::VARCHAR AS host_id, NULL::TIMESTAMPTZ AS bucket, NULL::DOUBLE AS cpu, "
    "NULL::DOUBLE AS memory, NULL::DOUBLE AS disk WHERE false"
)
_SNAPSHOT_SQL = (
    "SELECT cluster_id, count(*) AS hosts, avg(cpu_usage_pct) AS cpu, "
    "max(cpu_usage_pct) AS cpu_max, avg(memory_usage_pct) AS memory, "
    "max(memory_usage_pct) AS memory_max, count(*) FILTER (WHERE role = 'worker') AS workers, "
    "avg(cpu_usage_pct) FILTER (WHERE role = 'worker') AS workers_cpu, "
    "avg(memory_usage_pct) FILTER (WHERE role = 'worker') AS workers_memory "
    "FROM ({hosts}) WHERE cluster_id IS NOT NULL GROUP BY cluster_id"
)
_EXTREMES_SQL = (
    "SELECT cluster_id, count(*) AS hosts, "
    "arg_max(struct_pack(host := host_id, pct := cpu_pct, bucket := bucket), (cpu_pct, host_id)) "
    "FILTER (WHERE cpu_pct IS NOT NULL) AS hottest, "
    "arg_max(struct_pack(host := host_id, pct := disk_pct, bucket := bucket), "
    "(disk_pct, host_id)) FILTER (WHERE disk_pct IS NOT NULL) AS fullest, "
    "list(host_id || ' (' || status || ')' ORDER BY host_id) "
    "FILTER (WHERE lower(status) <> 'healthy') AS not_healthy "
    "FROM ({hosts}) WHERE cluster_id IS NOT NULL GROUP BY cluster_id"
)
# The last whole minute before a moment (when an action ran), all hosts and workers: the
# minute the moment falls in already holds samples taken after it.
_BEFORE_SQL = (
    "WITH moment AS (SELECT cluster_id, max(bucket) AS bucket FROM cluster_utilization_1m "
    "WHERE bucket + INTERVAL 1 MINUTE <= $before AND ($cluster IS NULL OR cluster_id = $cluster) "
    "GROUP BY cluster_id) "
    "SELECT moment.cluster_id, moment.bucket, c.cpu_avg, c.memory_avg, "
    "(SELECT avg(u.cpu_avg) FROM host_utilization_1m u JOIN hosts h ON h.host_id = u.host_id "
    "AND h.role = 'worker' WHERE u.cluster_id = moment.cluster_id AND u.bucket = moment.bucket) "
    "FROM moment JOIN cluster_utilization_1m c ON c.cluster_id = moment.cluster_id "
    "AND c.bucket = moment.bucket"
)
NO_UTILISATION = (
    "no utilisation data: no metrics have landed and the host inventory is empty "
    "(run the ingestion first)"
)


def _change(points: float) -> str:
    if abs(points) < 0.05:
        return "unchanged"
    return f"{'up' if points > 0 else 'down'} {abs(points):.1f} points"


def _inventory_hosts(ctx: ToolContext) -> str:
    """The ontology's `host` objects, read live from their backing table."""
    obj = ctx.ontology().ontology.object_types.get("host")
    if obj is None:
        raise ToolFailure("the ontology declares no host object type")
    return typed_select(obj, ctx.ontology().folder)


def _hosts_now(ctx: ToolContext, conn: duckdb.DuckDBPyConnection) -> str:
    """Every host with its CPU, memory and disk now: its latest minute of landed metrics where
    there is one, else the inventory snapshot (`bucket` NULL), so the frozen sample and a live
    system answer through the same query."""
    live = _LIVE_HOSTS if table_exists(conn, "host_utilization_1m") else _NO_LIVE_HOSTS
    return (
        "SELECT h.host_id, h.cluster_id, h.role, h.rack, h.status, l.bucket, "
        "coalesce(l.cpu, h.cpu_usage_pct) AS cpu_pct, "
        "coalesce(l.memory, h.memory_usage_pct) AS memory_pct, "
        "coalesce(l.disk, h.disk_usage_pct) AS disk_pct "
        f"FROM ({_inventory_hosts(ctx)}) h LEFT JOIN ({live}) l ON l.host_id = h.host_id"
    )


def _source(bucket: datetime | None) -> str:
    return SNAPSHOT if bucket is None else f"{LIVE} {_minute(bucket)}"


def _capacity_fact(cid: str, capacity: Mapping[str, Any]) -> str | None:
    parts = [
        f"{_num(capacity[column])} {unit}"
        for column, unit in (
            ("total_vcores", "vcores"),
            ("total_memory_gb", "GB memory"),
            ("hdfs_capacity_tb", "TB HDFS"),
        )
        if capacity.get(column) is not None
    ]
    return f"{cid} capacity: {', '.join(parts)}" if parts else None


def _extremes_fact(cid: str, extremes: Mapping[str, Any]) -> str:
    parts = []
    for label, key, metric in (("hottest host", "hottest", "CPU"), ("fullest disk", "fullest", "")):
        found = extremes[key]
        if found is not None:
            what = f"{metric} " if metric else ""
            parts.append(
                f"{label} {found['host']} {what}{found['pct']:.1f}% ({_source(found['bucket'])})"
            )
    not_healthy = extremes["not_healthy"] or []
    health = (
        f"not healthy: {', '.join(not_healthy)}"
        if not_healthy
        else f"all {extremes['hosts']} hosts healthy"
    )
    return f"{cid}: {', '.join([*parts, health])}"


class ClusterUtilisationArgs(_Arguments):
    cluster_id: ClusterId = None
    minutes: int = Field(
        15,
        ge=1,
        le=1440,
        description="Length of the window before the latest minute to compare it with.",
    )
    compare_with: datetime | None = Field(
        None,
        description="Also report each cluster's figures at the last whole minute before this "
        "time (ISO 8601), e.g. when an action ran: 'did it drop after the kill?'.",
    )


def cluster_utilisation(ctx: ToolContext, args: ClusterUtilisationArgs) -> Findings:
    """Each cluster's CPU and memory with its capacity, hottest host and fullest disk. Landed
    metrics win: the latest minute against the minutes before it, so "is it high?" and "did
    it drop?" have one answer. A cluster without them falls back to the host inventory's
    snapshot, and each fact says which it is. Windows end at the newest data, not the wall
    clock, so replayed data answers the same way."""
    params = {"cluster": args.cluster_id, "minutes": args.minutes}
    with _reading(ctx) as conn:
        live: dict[str, dict[str, Any]] = {}
        workers: dict[str, tuple[float | None, float | None, float | None]] = {}
        if table_exists(conn, "cluster_utilization_1m"):
            live = {r["cluster_id"]: r for r in _rows(conn.execute(_CLUSTERS_SQL, params))}
        if live and table_exists(conn, "host_utilization_1m") and table_exists(conn, "hosts"):
            workers = {
                cid: (cpu, memory, before)
                for cid, cpu, memory, before in conn.execute(_WORKERS_SQL, params).fetchall()
            }
        before: dict[str, tuple[Any, ...]] = {}
        if live and args.compare_with is not None and table_exists(conn, "hosts"):
            at = {"cluster": args.cluster_id, "before": args.compare_with}
            before = {r[0]: r for r in conn.execute(_BEFORE_SQL, at).fetchall()}
        hosts = _inventory_hosts(ctx)
        snapshot = {
            r["cluster_id"]: r for r in _rows(conn.execute(_SNAPSHOT_SQL.format(hosts=hosts)))
        }
        extremes = {
            r["cluster_id"]: r
            for r in _rows(conn.execute(_EXTREMES_SQL.format(hosts=_hosts_now(ctx, conn))))
        }
        capacity = _capacity(conn)
        if args.cluster_id is not None and args.cluster_id not in set(snapshot) | set(live):
            with_data = set(snapshot) | (
                key_values(conn, "cluster_utilization_1m", "cluster_id") or set()
            )
            if args.cluster_id not in set(capacity):
                raise unknown_name("cluster", args.cluster_id, sorted(set(capacity) | with_data))
            raise ToolFailure(
                f"no utilisation data for cluster {args.cluster_id!r} yet "
                f"(clusters with data: {', '.join(sorted(with_data)) or 'none'})"
            )
    clusters = [args.cluster_id] if args.cluster_id else sorted(set(live) | set(snapshot))
    if not clusters:
        raise ToolFailure(NO_UTILISATION)
    newest = max((r["bucket"] for r in live.values()), default=None)
    headlines = [
        _live_cluster(live[cid], workers.get(cid, (None, None, None)), args)
        if cid in live
        else _snapshot_cluster(snapshot[cid])
        for cid in clusters
    ]
    headlines.sort(
        key=lambda h: (-(h[0]["workers_cpu_pct"] or h[0]["cpu_pct"] or 0.0), h[0]["cluster_id"])
    )
    rows: list[dict[str, Any]] = []
    facts: list[str] = []
    contexts: list[Context] = []
    for row, fact in headlines:
        cid, bucket = row["cluster_id"], row["bucket"]
        if bucket is not None:
            if bucket < newest:  # a cluster that went quiet must not read as a steady one
                fact += f"; no data since {_minute(bucket)}"
            context = Context(
                f"cluster_utilization_1m:{cid}:{_plain(bucket)}",
                "warehouse",
                f"{fact} (minute of {_minute(bucket)})",
                "cluster_utilization_1m",
            )
        else:
            context = Context(f"hosts:{cid}:utilisation", "warehouse", fact, "hosts")
        if cid in before:
            fact += _before_fact(row, before[cid])
            context = replace(context, text=f"{fact} (minute of {_minute(bucket)})")
        rows.append(row)
        facts.append(fact)
        contexts.append(context)
        found = extremes.get(cid, {})
        hottest, fullest = found.get("hottest"), found.get("fullest")
        row.update(
            hottest_host=hottest["host"] if hottest else None,
            hottest_host_cpu_pct=_round(hottest["pct"]) if hottest else None,
            fullest_disk_host=fullest["host"] if fullest else None,
            fullest_disk_pct=_round(fullest["pct"]) if fullest else None,
            not_healthy_hosts=found.get("not_healthy") or [],
        )
        if found:
            fact = _extremes_fact(cid, found)
            facts.append(fact)
            contexts.append(Context(f"hosts:{cid}:extremes", "warehouse", fact, "hosts"))
        cap = capacity.get(cid, {})
        row.update(
            total_vcores=cap.get("total_vcores"),
            total_memory_gb=cap.get("total_memory_gb"),
            hdfs_capacity_tb=cap.get("hdfs_capacity_tb"),
        )
        fact = _capacity_fact(cid, cap)
        if fact is not None:
            facts.append(fact)
            contexts.append(Context(f"clusters:{cid}:capacity", "warehouse", fact, "clusters"))
    top = rows[0]
    sources = []
    if live:
        sources.append(f"{len(live)} from the latest minute {_minute(newest)}")
    if len(rows) > len(live):
        sources.append(f"{len(rows) - len(live)} from the {SNAPSHOT}")
    headline = (
        f"workers' CPU {top['workers_cpu_pct']:.1f}%"
        if top["workers_cpu_pct"] is not None
        else f"CPU {top['cpu_pct']:.1f}%"
    )
    summary = (
        f"utilisation of {len(rows)} cluster(s) ({', '.join(sources)}); "
        f"highest: {top['cluster_id']} {headline}"
    )
    subjects = [r["cluster_id"] for r in rows]
    details = {"newest": _plain(newest), "compare_with": _plain(args.compare_with)}
    return Findings(summary, facts, rows, contexts, subjects, details)


def _before_fact(row: dict[str, Any], before: tuple[Any, ...]) -> str:
    """The cluster's figures at the minute before a moment, added to its row; the fact's tail."""
    _, bucket, cpu, memory, workers_cpu = before
    row.update(
        before_bucket=bucket,
        cpu_before_pct=_round(cpu),
        memory_before_pct=_round(memory),
        workers_cpu_before_pct=_round(workers_cpu),
    )
    text = f"; at {_minute(bucket)}: CPU {cpu:.1f}%, memory {memory:.1f}%"
    if workers_cpu is not None:
        text += f", workers' CPU {workers_cpu:.1f}%"
    return text


def _live_cluster(
    r: Mapping[str, Any],
    workers: tuple[float | None, float | None, float | None],
    args: ClusterUtilisationArgs,
) -> tuple[dict[str, Any], str]:
    """A cluster's row and headline fact from its latest rollup minute."""
    workers_cpu, workers_memory, workers_before = workers
    change = r["cpu_avg"] - r["window_cpu"] if r["window_cpu"] is not None else None
    if change is None:
        compared = f"no earlier minute in the last {args.minutes} to compare with"
    else:
        compared = f"{args.minutes}-min average {r['window_cpu']:.1f}%, {_change(change)}"
    fact = (
        f"{r['cluster_id']}: CPU {r['cpu_avg']:.1f}% in the {LIVE} ({compared}), "
        f"memory {r['memory_avg']:.1f}%, {r['hosts']} host{'s' if r['hosts'] != 1 else ''} "
        "reporting"
    )
    if workers_cpu is not None:
        fact += f"; workers' CPU {workers_cpu:.1f}%, memory {workers_memory:.1f}%"
    row = {
        "cluster_id": r["cluster_id"],
        "source": LIVE,
        "bucket": r["bucket"],
        "hosts": r["hosts"],
        "cpu_pct": _round(r["cpu_avg"]),
        "cpu_max_pct": _round(r["cpu_max"]),
        "memory_pct": _round(r["memory_avg"]),
        "memory_max_pct": _round(r["memory_max"]),
        "window_minutes": r["window_minutes"],
        "cpu_window_avg_pct": _round(r["window_cpu"]),
        "memory_window_avg_pct": _round(r["window_memory"]),
        "cpu_change_points": _round(change),
        "workers_cpu_pct": _round(workers_cpu),
        "workers_memory_pct": _round(workers_memory),
        "workers_cpu_window_avg_pct": _round(workers_before),
    }
    return row, fact


def _snapshot_cluster(r: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A cluster's row and headline fact from the host inventory's utilisation columns."""
    cid, hosts = r["cluster_id"], r["hosts"]
    everyone = f"CPU {_pct(r['cpu'])}, memory {_pct(r['memory'])}"
    if r["workers"]:
        fact = (
            f"{cid}: workers' CPU {_pct(r['workers_cpu'])}, memory {_pct(r['workers_memory'])} "
            f"(mean of {r['workers']} workers); all {hosts} hosts {everyone} ({SNAPSHOT})"
        )
    else:
        fact = f"{cid}: {everyone} (mean of {hosts} hosts, {SNAPSHOT})"
    row = {
        "cluster_id": cid,
        "source": SNAPSHOT,
        "bucket": None,
        "hosts": hosts,
        "cpu_pct": _round(r["cpu"]),
        "cpu_max_pct": _round(r["cpu_max"]),
        "memory_pct": _round(r["memory"]),
        "memory_max_pct": _round(r["memory_max"]),
        "window_minutes": None,
        "cpu_window_avg_pct": None,
        "memory_window_avg_pct": None,
        "cpu_change_points": None,
        "workers_cpu_pct": _round(r["workers_cpu"]),
        "workers_memory_pct": _round(r["workers_memory"]),
        "workers_cpu_window_avg_pct": None,
    }
    return row, fact


CLUSTER_UTILISATION = Tool(
    "cluster_utilisation",
    "CPU and memory utilisation per cluster (workers' mean and all hosts), the hottest "
    "host, the fullest disk, unhealthy hosts and the capacity (vcores, memory, HDFS). "
    "Use for 'how busy is the cluster', 'did utilisation drop' and 'how big is it'.",
    ClusterUtilisationArgs,
    cluster_utilisation,
)


# --- hosts -----------------------------------------------------------------------------------

Percent = Annotated[float | None, Field(ge=0, le=100)]
NOT_HEALTHY = "not_healthy"  # the status filter meaning every status but healthy
_NOT_HEALTHY_ALIASES = {"not_healthy", "non_healthy", "unhealthy"}


class FindHostsArgs(_Arguments):
    cluster_id: ClusterId = None
    host_id: str | None = _text_filter("Only this host, e.g. etl-prod-worker-07.")
    role: str | None = _text_filter("Only hosts of this role: worker, master, edge or kafka.")
    status: str | None = _text_filter(
        f"Only hosts in this status (healthy, degraded, maintenance); {NOT_HEALTHY!r} for "
        "every status but healthy."
    )
    rack: str | None = _text_filter("Only hosts on this rack, e.g. r01.")
    min_cpu_pct: Percent = Field(None, description="Only hosts at or above this CPU %.")
    min_memory_pct: Percent = Field(None, description="Only hosts at or above this memory %.")
    min_disk_pct: Percent = Field(None, description="Only hosts at or above this disk %.")
    order_by: Literal["cpu", "memory", "disk"] = Field(
        "cpu", description="Highest first by this metric."
    )
    limit: int = Field(10, ge=1, le=100, description="How many hosts at most.")

    @field_validator("role", mode="after")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value and value.lower()

    @field_validator("status", mode="after")
    @classmethod
    def _status(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        spelled = value.replace("-", "_").replace(" ", "_")
        return NOT_HEALTHY if spelled in _NOT_HEALTHY_ALIASES else value


_HOST_ORDER = {"cpu": "cpu_pct", "memory": "memory_pct", "disk": "disk_pct"}


def _host_fact(r: Mapping[str, Any]) -> str:
    where = ", ".join(
        part
        for part in (
            r["role"],
            r["cluster_id"],
            r["rack"] and f"rack {r['rack']}",
            r["status"],
        )
        if part
    )
    return (
        f"{r['host_id']} ({where}): CPU {_pct(r['cpu_pct'])}, memory {_pct(r['memory_pct'])}, "
        f"disk {_pct(r['disk_pct'])} ({_source(r['bucket'])})"
    )


def find_hosts(ctx: ToolContext, args: FindHostsArgs) -> Findings:
    """Hosts by cluster, id, role, status, rack and utilisation thresholds, the highest of one
    metric first: which host is hottest, which disks are full, which hosts are unwell. Each
    host's latest landed minute wins over the inventory snapshot, and its fact says which."""
    conditions: list[str] = []
    params: dict[str, Any] = {"limit": args.limit}
    for column, value in (
        ("cluster_id", args.cluster_id),
        ("host_id", args.host_id),
        ("role", args.role),
        ("rack", args.rack),
    ):
        if value is not None:
            conditions.append(f"lower({column}) = lower(${column})")
            params[column] = value
    if args.status == NOT_HEALTHY:
        conditions.append("coalesce(lower(status), '') <> 'healthy'")
    elif args.status is not None:
        conditions.append("lower(status) = $status")
        params["status"] = args.status
    for column, value in (
        ("cpu_pct", args.min_cpu_pct),
        ("memory_pct", args.min_memory_pct),
        ("disk_pct", args.min_disk_pct),
    ):
        if value is not None:
            conditions.append(f"round({column}, 1) >= ${column}")
            params[column] = value
    order = _HOST_ORDER[args.order_by]
    with _reading(ctx) as conn:
        view = _hosts_now(ctx, conn)
        found = _rows(
            conn.execute(
                f"SELECT *, count(*) OVER () AS matching FROM ({view}) "
                f"WHERE {' AND '.join(conditions) or 'true'} "
                f"ORDER BY {order} DESC NULLS LAST, host_id LIMIT $limit",
                params,
            )
        )
        if not found:
            _check_host_filters(conn, view, args)
    scope = _host_scope(args)
    details = {"scope": scope.strip(), "order_by": args.order_by}
    if not found:
        return Findings(f"no hosts{scope}", details={**details, "matching": 0})
    rows = [
        {
            "host_id": r["host_id"],
            "cluster_id": r["cluster_id"],
            "role": r["role"],
            "rack": r["rack"],
            "status": r["status"],
            "cpu_pct": _round(r["cpu_pct"]),
            "memory_pct": _round(r["memory_pct"]),
            "disk_pct": _round(r["disk_pct"]),
            "source": LIVE if r["bucket"] is not None else SNAPSHOT,
            "bucket": r["bucket"],
        }
        for r in found
    ]
    facts = [_host_fact(r) for r in found]
    contexts = [
        Context(
            f"host:{r['host_id']}",
            "warehouse",
            fact,
            "host_utilization_1m" if r["bucket"] is not None else "hosts",
        )
        for r, fact in zip(found, facts, strict=True)
    ]
    sources = sorted({row["source"] for row in rows})
    summary = (
        f"{len(found)} of {found[0]['matching']} hosts{scope}, highest {args.order_by} first "
        f"({' and '.join(sources)})"
    )
    subjects = [r["host_id"] for r in found]
    details["matching"] = found[0]["matching"]
    return Findings(summary, facts, rows, contexts, subjects, details)


def _host_scope(args: FindHostsArgs) -> str:
    parts = [
        f"{label} {value}"
        for label, value in (
            ("of", args.cluster_id),
            ("named", args.host_id),
            ("with role", args.role),
            ("on rack", args.rack),
            ("in status", args.status and args.status.replace("_", " ")),
        )
        if value
    ]
    parts += [
        f"with {metric} ≥ {value:g}%"
        for metric, value in (
            ("CPU", args.min_cpu_pct),
            ("memory", args.min_memory_pct),
            ("disk", args.min_disk_pct),
        )
        if value is not None
    ]
    return "".join(f" {part}" for part in parts)


def _check_host_filters(conn: duckdb.DuckDBPyConnection, view: str, args: FindHostsArgs) -> None:
    """An empty answer because a filter names nothing known fails with the values to use."""
    status = None if args.status == NOT_HEALTHY else args.status
    for what, column, value in (
        ("cluster", "cluster_id", args.cluster_id),
        ("host", "host_id", args.host_id),
        ("role", "role", args.role),
        ("rack", "rack", args.rack),
        ("status", "status", status),
    ):
        if value is None:
            continue
        known = [
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT {column} FROM ({view}) WHERE {column} IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
        if value.lower() not in {k.lower() for k in known}:
            extra = f"; or {NOT_HEALTHY}" if what == "status" else ""
            raise unknown_name(what, value, known, extra)


FIND_HOSTS = Tool(
    "find_hosts",
    "Hosts with their CPU, memory and disk %, status, role and rack, filtered by "
    "cluster, host, role, status (or not_healthy), rack and minimum CPU/memory/disk, "
    "highest first. Use for 'which host is hottest', 'is this disk full', 'which hosts "
    "are degraded'.",
    FindHostsArgs,
    find_hosts,
)


# --- ontology --------------------------------------------------------------------------------

MAX_NEIGHBOURS = 50  # a 3-hop question on a hub reaches hundreds; the model needs the nearest


class NeighboursArgs(_Arguments):
    object_type: str = Field(
        min_length=1,
        max_length=100,
        description="cluster, host, spark_job, runbook, incident or alert.",
    )
    key: str = Field(min_length=1, max_length=200, description="The object's id, e.g. etl-prod.")
    depth: int = Field(1, ge=1, le=3, description="How many links away.")
    link_type: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Only this link type (e.g. member_of, runs_on); every type when omitted.",
    )


def ontology_neighbours(ctx: ToolContext, args: NeighboursArgs) -> Findings:
    """What an object is linked to (a host's cluster, a cluster's jobs, an incident's runbook),
    nearest first, from the last ontology build."""
    loaded = ctx.ontology()
    link_types = [args.link_type] if args.link_type else None
    with _reading(ctx) as conn:
        try:
            q = OntologyQuery(conn, loaded, cache_key=ctx.settings.warehouse_path)
            found = q.neighbours(args.object_type, args.key, link_types, args.depth)
        except LookupError as exc:  # unknown type, object or link type; no build yet
            raise ToolFailure(str(exc.args[0]) if exc.args else str(exc)) from None
        node = q.graph.node(args.object_type, args.key)
        title = q.graph.node_title[node] if node is not None else None
    shown = found[:MAX_NEIGHBOURS]
    rows, facts, contexts = [], [], []
    for n in shown:
        links = "/".join(n.link_types)
        fact = (
            f"{n.object} ({n.object.title or 'untitled'}): {links} ({n.direction}) of {n.via}, "
            f"{n.depth} link{'s' if n.depth > 1 else ''} away"
        )
        rows.append(
            {
                "object_type": n.object.object_type,
                "key": n.object.key,
                "title": n.object.title,
                "depth": n.depth,
                "via": str(n.via),
                "link_types": n.link_types,
                "direction": n.direction,
            }
        )
        facts.append(fact)
        contexts.append(Context(str(n.object), "ontology", fact, "ontology_links"))
    start = f"{args.object_type}:{args.key}" + (f" ({title})" if title else "")
    more = f", showing the nearest {len(shown)}" if len(found) > len(shown) else ""
    summary = f"{len(found)} objects within {args.depth} link(s) of {start}{more}"
    subjects = [str(n.object) for n in shown]
    return Findings(summary, facts, rows, contexts, subjects)


ONTOLOGY_NEIGHBOURS = Tool(
    "ontology_neighbours",
    "Objects linked to an ontology object (cluster, host, spark_job, runbook, incident, "
    "alert), nearest first.",
    NeighboursArgs,
    ontology_neighbours,
)

AGENT = Agent("infra", (CLUSTER_UTILISATION, FIND_HOSTS, ONTOLOGY_NEIGHBOURS))
