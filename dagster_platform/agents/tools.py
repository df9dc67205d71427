"""The typed tools the agents call: utilisation, Spark jobs, the ontology, kill proposals and
the knowledge base.

A tool validates its arguments with pydantic and answers with a :class:`ToolResult`, never an
exception, so an agent loop can hand a bad call back to the model to correct. `facts` carry
the numbers an answer quotes, and `subjects` the ids in rank order, so that a follow-up ("of
these, the top 2") resolves against what the operator was shown. Reads use short read-only
connections; `propose_kill` alone writes, and only proposals: a person with the approver role
approves outside any tool. Retrieved text is passed on as data; no tool acts on what it says.
Utilisation comes from the landed metrics' latest minute where there is one and from the host
inventory's snapshot otherwise, and each fact names which, so that a frozen snapshot and a live
system are answered by the same tools; job windows count back from the newest job time in the
data, never the wall clock, for the same reason.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import duckdb
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from dagster_platform.knowledge.retriever import Filters, HybridRetriever, documents_in_order
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import key_values, open_warehouse, quote, table_exists
from dagster_platform.ontology.actions import ActionError, list_actions, propose
from dagster_platform.ontology.build import typed_select
from dagster_platform.ontology.loader import LoadedOntology, OntologyError, load_ontology
from dagster_platform.ontology.objects import read_object, with_functions
from dagster_platform.ontology.query import OntologyQuery
from dagster_platform.settings import Settings

log = get_logger(__name__)

KILL_ACTION = "kill_spark_job"
MAX_NEIGHBOURS = 50  # a 3-hop question on a hub reaches hundreds; the model needs the nearest
MAX_QUEUES = 10  # per-queue totals shown with a job search
MAX_HELD_QUEUES, MAX_HOLDERS = 3, 3  # the running jobs shown for the queues that jobs wait in
WAITING = ("SUBMITTED", "ACCEPTED")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """A retrieved passage or a data row that grounds the answer."""

    id: str
    source: str  # "runbook", "incident", "warehouse", "ontology"
    text: str
    citation: str | None = None


@dataclass(frozen=True)
class ToolResult:
    tool: str
    arguments: dict[str, Any]
    ok: bool
    summary: str
    facts: list[str]
    rows: list[dict[str, Any]]
    contexts: list[Context]
    subjects: list[str]
    error: str | None = None

    @classmethod
    def failure(cls, tool: str, arguments: dict[str, Any], error: str) -> ToolResult:
        return cls(tool, arguments, False, error.splitlines()[0], [], [], [], [], error)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ToolFailure(Exception):
    """A tool cannot answer; the message says why and what would help (the model reads it)."""


@dataclass
class ToolContext:
    """What the tools need, opened by the caller; the ontology and the retriever are opened on
    first use and kept for the session."""

    settings: Settings
    actor: str = "assistant"
    retriever_factory: Callable[[], HybridRetriever] | None = None
    _retriever: HybridRetriever | None = field(default=None, init=False, repr=False)
    _ontology: LoadedOntology | None = field(default=None, init=False, repr=False)

    def retriever(self) -> HybridRetriever:
        if self._retriever is None:
            if self.retriever_factory is None:
                raise ToolFailure("the knowledge base is not available to this assistant")
            try:
                self._retriever = self.retriever_factory()
            except Exception as exc:  # not cached: the next call tries again
                raise ToolFailure(f"the knowledge base cannot be opened: {exc}") from exc
        return self._retriever

    def ontology(self) -> LoadedOntology:
        if self._ontology is None:
            try:
                self._ontology = load_ontology(self.settings.ontology_dir)
            except OntologyError as exc:
                raise ToolFailure(f"the ontology is invalid: {exc}") from exc
        return self._ontology


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    run: Callable[[ToolContext, Any], ToolResult]

    def schema(self) -> dict[str, Any]:
        """The tool as an OpenAI function tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": _without_titles(self.arguments.model_json_schema()),
            },
        }

    def call(self, ctx: ToolContext, raw_arguments: Mapping[str, Any] | str) -> ToolResult:
        """Validate and run; bad arguments and failures come back as `ok=False` with the
        reason. A JSON string is accepted too, as models emit arguments that way."""
        started = time.monotonic()
        if isinstance(raw_arguments, str):
            try:
                raw_arguments = json.loads(raw_arguments or "{}")
            except json.JSONDecodeError as exc:
                return ToolResult.failure(self.name, {}, f"arguments are not JSON: {exc}")
        if not isinstance(raw_arguments, Mapping):
            given = {"arguments": _plain(raw_arguments)}
            return ToolResult.failure(self.name, given, "arguments must be a JSON object")
        given = _plain(dict(raw_arguments))
        try:
            parsed = self.arguments.model_validate(dict(raw_arguments))
        except ValidationError as exc:
            return ToolResult.failure(self.name, given, _invalid(self.arguments, exc))
        try:
            result = self.run(ctx, parsed)
        except ToolFailure as exc:
            result = ToolResult.failure(self.name, parsed.model_dump(mode="json"), str(exc))
        except duckdb.CatalogException as exc:
            first = str(exc).splitlines()[0]
            reason = f"a table is missing from the warehouse (run the ingestion first): {first}"
            result = ToolResult.failure(self.name, parsed.model_dump(mode="json"), reason)
        except Exception as exc:  # an agent loop must get an answer, not a traceback
            log.exception("tool failed", extra={"tool": self.name})
            reason = f"{type(exc).__name__}: {exc}"
            result = ToolResult.failure(self.name, parsed.model_dump(mode="json"), reason)
        log.info(
            "tool call",
            extra={
                "tool": self.name,
                "ok": result.ok,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return result


def _without_titles(schema: Any) -> Any:
    """The JSON schema without pydantic's generated titles, which only cost prompt tokens (a
    property named `title` is a mapping, so it stays)."""
    if isinstance(schema, dict):
        return {
            k: _without_titles(v)
            for k, v in schema.items()
            if not isinstance(v, str) or k != "title"
        }
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def _invalid(model: type[BaseModel], exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":
            expected = ", ".join(model.model_fields) or "none"
            problems.append(f"{where}: unexpected argument (expected: {expected})")
        elif error["type"] == "missing":
            problems.append(f"{where}: required")
        else:
            got = repr(error["input"])
            got = got if len(got) <= 80 else got[:77] + "..."
            problems.append(f"{where}: {error['msg']} (got {got})")
    return "invalid arguments: " + "; ".join(problems)


def _plain(value: Any) -> Any:
    """The value as JSON can carry it: timestamps as ISO strings in UTC, no NaN."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _ok(
    tool: str,
    args: BaseModel,
    summary: str,
    facts: list[str],
    rows: Sequence[Mapping[str, Any]],
    contexts: list[Context],
    subjects: list[str],
) -> ToolResult:
    return ToolResult(
        tool,
        args.model_dump(mode="json"),
        True,
        summary,
        facts,
        [_plain(row) for row in rows],
        contexts,
        subjects,
    )


# --- warehouse helpers -----------------------------------------------------------------------


@contextmanager
def _reading(ctx: ToolContext) -> Iterator[duckdb.DuckDBPyConnection]:
    path = ctx.settings.warehouse_path
    if not path.is_file():
        raise ToolFailure(f"no warehouse at {path}: run the ingestion first")
    with open_warehouse(path, read_only=True) as conn:
        yield conn


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _pct(value: float | None) -> str:
    return "?%" if value is None else f"{value:.1f}%"


def _num(value: float) -> str:
    """A quantity as the data writes it, to one decimal and none when whole (2048, 250.8), so
    an answer quotes the same string as the inventory."""
    text = f"{float(value):.1f}"
    return text.removesuffix(".0")


def _listing(values: Sequence[str], most: int = 50) -> str:
    shown = ", ".join(values[:most]) or "none"
    return shown + (f", … ({len(values) - most} more)" if len(values) > most else "")


def _minute(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _change(points: float) -> str:
    if abs(points) < 0.05:
        return "unchanged"
    return f"{'up' if points > 0 else 'down'} {abs(points):.1f} points"


# --- arguments -------------------------------------------------------------------------------


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


ClusterId = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=100,
        description="Only this cluster (e.g. etl-prod); every cluster when omitted.",
    ),
]
JobState = Literal["SUBMITTED", "ACCEPTED", "RUNNING", "FINISHED", "FAILED", "KILLED"]
ApplicationId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]
Percent = Annotated[float | None, Field(ge=0, le=100)]
NOT_HEALTHY = "not_healthy"  # the status filter meaning every status but healthy
_NOT_HEALTHY_ALIASES = {"not_healthy", "non_healthy", "unhealthy"}


def _text_filter(description: str) -> Any:
    return Field(None, min_length=1, max_length=200, description=description)


class ClusterUtilisationArgs(_Arguments):
    cluster_id: ClusterId = None
    minutes: int = Field(
        15,
        ge=1,
        le=1440,
        description="Length of the window before the latest minute to compare it with.",
    )


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


def _upper_text(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


JobOrder = Literal["cpu_share", "memory", "vcores", "start_time", "runtime"]


class FindSparkJobsArgs(_Arguments):
    cluster_id: ClusterId = None
    state: list[JobState] | None = Field(
        None,
        min_length=1,
        max_length=6,
        description="Only jobs in these states (one state or a list); every state when omitted.",
    )
    user: str | None = _text_filter("Only jobs of this user, e.g. sypark.")
    queue: str | None = _text_filter(
        "Only jobs of this YARN queue: the full name (root.etl.backfill) or its last part."
    )
    name: str | None = _text_filter("Only jobs whose name contains this text.")
    driver_host: str | None = _text_filter("Only jobs whose driver runs on this host.")
    application_id: str | None = _text_filter("Only this application.")
    since_hours: float | None = Field(
        None,
        gt=0,
        le=2160,
        description="Only jobs still active or ended within this many hours before the newest "
        "job time in the data.",
    )
    order_by: JobOrder = Field(
        "cpu_share",
        description="cpu_share, memory or vcores: largest first; start_time: newest first; "
        "runtime: longest first.",
    )
    limit: int = Field(10, ge=1, le=50, description="How many jobs at most.")

    @field_validator("state", mode="before")
    @classmethod
    def _states(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        return [_upper_text(v) for v in value] if isinstance(value, list) else value


class TopSparkJobsArgs(_Arguments):
    n: int = Field(3, ge=1, le=20, description="How many jobs.")
    cluster_id: ClusterId = None
    state: JobState | None = Field(
        "RUNNING", description="Only jobs in this state; every state when null."
    )

    @field_validator("state", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return _upper_text(value)


class SparkJobDetailsArgs(_Arguments):
    application_id: ApplicationId = Field(description="e.g. application_1794712500000_0488.")


class ProposeKillArgs(_Arguments):
    application_ids: list[ApplicationId] = Field(
        min_length=1, max_length=10, description="The Spark applications to kill."
    )
    reason: str = Field(
        min_length=1, max_length=500, description="Why they must be killed, for the approver."
    )


class SearchArgs(_Arguments):
    query: str = Field(
        min_length=1, max_length=1000, description="The question, Korean or English."
    )
    k: int = Field(3, ge=1, le=10, description="How many passages.")


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
NO_UTILISATION = (
    "no utilisation data: no metrics have landed and the host inventory is empty "
    "(run the ingestion first)"
)


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


def _capacity(conn: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    if not table_exists(conn, "clusters"):
        return {}
    sql = "SELECT cluster_id, total_vcores, total_memory_gb, hdfs_capacity_tb FROM clusters"
    return {r["cluster_id"]: r for r in _rows(conn.execute(sql))}


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


def cluster_utilisation(ctx: ToolContext, args: ClusterUtilisationArgs) -> ToolResult:
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
                known = ", ".join(sorted(set(capacity) | with_data)) or "none"
                raise ToolFailure(f"unknown cluster {args.cluster_id!r} (known: {known})")
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
    return _ok("cluster_utilisation", args, summary, facts, rows, contexts, subjects)


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


def find_hosts(ctx: ToolContext, args: FindHostsArgs) -> ToolResult:
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
    if not found:
        return _ok("find_hosts", args, f"no hosts{scope}", [], [], [], [])
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
    return _ok("find_hosts", args, summary, facts, rows, contexts, subjects)


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
            raise ToolFailure(f"unknown {what} {value!r} (known: {_listing(known)}{extra})")


# --- ontology --------------------------------------------------------------------------------


def ontology_neighbours(ctx: ToolContext, args: NeighboursArgs) -> ToolResult:
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
    return _ok("ontology_neighbours", args, summary, facts, rows, contexts, subjects)


def _job_fact(job: Mapping[str, Any]) -> str:
    memory = f"{_num(job['memory_gb'])} GB" if job["memory_gb"] is not None else "? GB"
    share = _pct(job["cpu_share_pct"]) if job["cpu_share_pct"] is not None else "unknown"
    return (
        f"{job['application_id']} {job['name']} on {job['cluster_id']} in {job['queue']} by "
        f"{job['user']} ({job['state']}): CPU share {share}, {job['vcores']} vcores, "
        f"{memory} memory"
    )


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def _timing(job: Mapping[str, Any]) -> str:
    if job["start_time"] is None:
        return "start unknown"
    if job["state"] in WAITING:
        return (
            f"submitted {_minute(job['start_time'])}, waiting for {_duration(job['runtime_hours'])}"
        )
    started = f"started {_minute(job['start_time'])}"
    if job["end_time"] is not None:
        return (
            f"{started}, ended {_minute(job['end_time'])} after {_duration(job['runtime_hours'])}"
        )
    return f"{started}, active for {_duration(job['runtime_hours'])}"


def _jobs_view(ctx: ToolContext) -> str:
    """The ontology's `spark_job` objects (the streamed state over the inventory) with the
    newest job time in the data, `as_of`: "the last 24 hours" and a running job's runtime
    count back from it, not from the wall clock, so a frozen snapshot answers as it did live."""
    obj = ctx.ontology().ontology.object_types.get("spark_job")
    if obj is None:
        raise ToolFailure("the ontology declares no spark_job object type")
    return (
        "WITH jobs AS (SELECT j.*, s.last_event_at "
        f"FROM ({typed_select(obj, ctx.ontology().folder)}) j "
        "LEFT JOIN spark_job_state s ON s.application_id = j.application_id), "
        "as_of AS (SELECT max(greatest(start_time, end_time, last_event_at)) AS t FROM jobs) "
        "SELECT jobs.*, as_of.t AS as_of, "
        "(epoch(coalesce(end_time, as_of.t)) - epoch(start_time)) / 3600.0 AS runtime_hours "
        "FROM jobs, as_of"
    )


_JOB_ORDER = {
    "cpu_share": (
        "cpu_share_pct DESC NULLS LAST, vcores DESC NULLS LAST, memory_gb DESC NULLS LAST",
        "by CPU share, then vcores, then memory",
    ),
    "memory": ("memory_gb DESC NULLS LAST, vcores DESC NULLS LAST", "by memory, then vcores"),
    "vcores": ("vcores DESC NULLS LAST, memory_gb DESC NULLS LAST", "by vcores, then memory"),
    "start_time": ("start_time DESC NULLS LAST", "newest first"),
    "runtime": ("runtime_hours DESC NULLS LAST", "longest-running first"),
}
_JOB_FILTERS = (  # argument, condition
    ("cluster_id", "lower(cluster_id) = lower($cluster_id)"),
    ("state", "list_contains($state, upper(state))"),
    ("user", 'lower("user") = lower($user)'),
    ("queue", "(lower(queue) = lower($queue) OR ends_with(lower(queue), '.' || lower($queue)))"),
    ("name", "contains(lower(name), lower($name))"),
    ("driver_host", "lower(driver_host) = lower($driver_host)"),
    ("application_id", "application_id = $application_id"),
    ("since_hours", "epoch(coalesce(end_time, as_of)) >= epoch(as_of) - $since_hours * 3600"),
)


def _jobs_scope(args: FindSparkJobsArgs) -> str:
    parts = [f"{'/'.join(args.state) if args.state else 'any-state'} Spark jobs"]
    parts += [
        f"{label} {value}"
        for label, value in (
            ("named like", args.name and repr(args.name)),
            ("on", args.cluster_id),
            ("in queue", args.queue),
            ("of user", args.user),
            ("with the driver on", args.driver_host),
            ("with id", args.application_id),
            ("active in the last", args.since_hours and f"{_num(args.since_hours)} h of the data"),
        )
        if value
    ]
    return " ".join(parts)


def find_spark_jobs(ctx: ToolContext, args: FindSparkJobsArgs) -> ToolResult:
    """Spark jobs by cluster, state, user, queue, name, driver host and recency, ranked, with
    what the matching jobs hold in all and per queue (and the cluster's capacity to compare):
    the questions operators ask about jobs are filters and sums over this one view."""
    given = args.model_dump()
    conditions = [sql for name, sql in _JOB_FILTERS if given[name] is not None]
    params = {name: given[name] for name, _ in _JOB_FILTERS if given[name] is not None}
    where = " AND ".join(conditions) or "true"
    order, order_text = _JOB_ORDER[args.order_by]
    with _reading(ctx) as conn:
        view = _jobs_view(ctx)
        found = _rows(
            conn.execute(
                f"SELECT *, count(*) OVER () AS matching FROM ({view}) WHERE {where} "
                f"ORDER BY {order}, application_id LIMIT $limit",
                {**params, "limit": args.limit},
            )
        )
        if not found:
            _check_job_filters(conn, view, args)
            return _ok("find_spark_jobs", args, f"no {_jobs_scope(args)}", [], [], [], [])
        queues = _rows(
            conn.execute(
                f"SELECT queue, count(*) AS jobs, sum(vcores) AS vcores, "
                f"sum(memory_gb) AS memory_gb FROM ({view}) WHERE {where} "
                "GROUP BY queue ORDER BY memory_gb DESC NULLS LAST, queue",
                params,
            )
        )
        capacity = _capacity(conn).get(args.cluster_id or "", {})
        holders = _queue_holders(conn, view, found)
    rows = [
        {k: v for k, v in r.items() if k != "matching"}
        | {"runtime_hours": _round(r["runtime_hours"])}
        for r in found
    ]
    facts = [
        f"{rank}. {_job_fact(r)}, driver on {r['driver_host'] or 'unknown'}, {_timing(r)}"
        for rank, r in enumerate(found, start=1)
    ]
    contexts = [
        Context(f"spark_job:{r['application_id']}", "warehouse", _job_fact(r), "spark_job")
        for r in found
    ]
    facts += _job_totals(args, found[0]["matching"], queues, capacity)
    facts += holders
    if args.since_hours is not None or args.order_by == "runtime":
        facts.append(
            f"times count back from the newest job time in the data, {_minute(found[0]['as_of'])}"
        )
    summary = f"top {len(found)} of {found[0]['matching']} {_jobs_scope(args)} {order_text}"
    subjects = [r["application_id"] for r in found]
    return _ok("find_spark_jobs", args, summary, facts, rows, contexts, subjects)


def _job_totals(
    args: FindSparkJobsArgs,
    matching: int,
    queues: Sequence[Mapping[str, Any]],
    capacity: Mapping[str, Any],
) -> list[str]:
    """What the matching jobs hold in all and per queue, against the cluster's capacity."""
    vcores = sum(q["vcores"] or 0 for q in queues)
    memory = sum(q["memory_gb"] or 0.0 for q in queues)
    total = f"{matching} matching job(s) in all: {vcores} vcores, {_num(memory)} GB memory"
    if capacity.get("total_vcores") and capacity.get("total_memory_gb"):
        cap_vcores, cap_memory = capacity["total_vcores"], capacity["total_memory_gb"]
        total += f"; {args.cluster_id} capacity {cap_vcores} vcores, {_num(cap_memory)} GB memory"
        if args.state == ["RUNNING"]:
            total += (
                f" ({vcores / cap_vcores * 100:.1f}% of the vcores and "
                f"{memory / cap_memory * 100:.1f}% of the memory held)"
            )
    facts = [total]
    facts += [
        f"queue {q['queue']}: {q['jobs']} job(s), {q['vcores'] or 0} vcores, "
        f"{_num(q['memory_gb'] or 0.0)} GB memory"
        for q in queues[:MAX_QUEUES]
    ]
    return facts


def _queue_holders(
    conn: duckdb.DuckDBPyConnection, view: str, found: Sequence[Mapping[str, Any]]
) -> list[str]:
    """For jobs waiting for resources, what runs in their queue: the answer to "why hasn't it
    started", from the same view."""
    waiting: dict[tuple[str, str], int] = {}
    for r in found:
        if r["state"] in WAITING and r["cluster_id"] and r["queue"]:
            key = (r["cluster_id"], r["queue"])
            waiting[key] = waiting.get(key, 0) + 1
    if not waiting:
        return []
    running = _rows(
        conn.execute(
            f"SELECT * FROM ({view}) WHERE state = 'RUNNING' "
            "AND list_contains($keys, cluster_id || ' ' || queue) "
            "ORDER BY memory_gb DESC NULLS LAST, vcores DESC NULLS LAST, application_id",
            {"keys": [f"{c} {q}" for c, q in waiting]},
        )
    )
    facts = []
    for (cluster, queue), count in list(waiting.items())[:MAX_HELD_QUEUES]:
        held = [r for r in running if (r["cluster_id"], r["queue"]) == (cluster, queue)]
        where = f"queue {queue} on {cluster}, where {count} shown job(s) wait,"
        if not held:
            facts.append(f"{where} has no RUNNING job: the wait is for the cluster's capacity")
            continue
        jobs = "; ".join(
            f"{r['application_id']} {r['name']} of {r['user']} ({r['vcores']} vcores, "
            f"{_num(r['memory_gb'] or 0.0)} GB memory)"
            for r in held[:MAX_HOLDERS]
        )
        more = f" and {len(held) - MAX_HOLDERS} more" if len(held) > MAX_HOLDERS else ""
        facts.append(f"{where} is held by {len(held)} RUNNING job(s): {jobs}{more}")
    return facts


def _check_job_filters(conn: duckdb.DuckDBPyConnection, view: str, args: FindSparkJobsArgs) -> None:
    """An empty answer because a filter names nothing known fails with the values to use."""
    inventory = {
        "cluster_id": key_values(conn, "clusters", "cluster_id") or set(),
        "driver_host": key_values(conn, "hosts", "host_id") or set(),
    }
    for what, column, value in (
        ("cluster", "cluster_id", args.cluster_id),
        ("user", "user", args.user),
        ("queue", "queue", args.queue),
        ("driver host", "driver_host", args.driver_host),
        ("application", "application_id", args.application_id),
    ):
        if value is None:
            continue
        known = {
            r[0]
            for r in conn.execute(
                f"SELECT DISTINCT {quote(column)} FROM ({view}) WHERE {quote(column)} IS NOT NULL"
            ).fetchall()
        } | inventory.get(column, set())
        names = {k.lower() for k in known}
        if column == "queue":
            names |= {k.rsplit(".", 1)[-1].lower() for k in known}
        if value.lower() not in names:
            if column == "application_id":
                raise ToolFailure(f"no Spark application {value!r} in the job inventory or stream")
            raise ToolFailure(f"unknown {what} {value!r} (known: {_listing(sorted(known))})")


def top_spark_jobs(ctx: ToolContext, args: TopSparkJobsArgs) -> ToolResult:
    """The Spark jobs using the most of their cluster: `find_spark_jobs` by CPU share, kept
    under its own name for the scenario that ranks, then proposes kills. The rows are the ones
    `propose_kill` checks, so a job ranked here as running can be proposed."""
    found = find_spark_jobs(
        ctx,
        FindSparkJobsArgs(
            cluster_id=args.cluster_id,
            state=[args.state] if args.state else None,
            limit=args.n,
        ),
    )
    return replace(found, tool="top_spark_jobs", arguments=args.model_dump(mode="json"))


def spark_job_details(ctx: ToolContext, args: SparkJobDetailsArgs) -> ToolResult:
    """One Spark job as the ontology has it now (functions evaluated), with its stream state."""
    loaded = ctx.ontology()
    app = args.application_id
    with _reading(ctx) as conn:
        try:
            job = read_object(conn, loaded, "spark_job", app)
        except KeyError as exc:
            raise ToolFailure(str(exc)) from None
        if job is None:
            raise ToolFailure(
                f"no Spark application {app!r} in the job inventory or the stream; "
                "find_spark_jobs finds jobs by name, user or queue"
            )
        job = with_functions(conn, loaded, "spark_job", app, job)
        stream = _rows(
            conn.execute(
                "SELECT first_seen, last_event_at, events FROM spark_job_state "
                "WHERE application_id = ?",
                [app],
            )
        )
    facts = [_job_fact(job)]
    recent = job.get("recent_cpu_share_pct")
    if recent is not None:
        facts.append(f"{app}: mean CPU share over its last 15 minutes of samples {recent:.1f}%")
    facts.append(
        f"{app}: started {_plain(job['start_time'])}, driver on {job['driver_host'] or 'unknown'}"
        + (f", ended {_plain(job['end_time'])}" if job["end_time"] else "")
    )
    row = dict(job)
    if stream:
        row.update(stream[0])
        facts.append(
            f"{app}: {stream[0]['events']} stream events, the latest at "
            f"{_plain(stream[0]['last_event_at'])}"
        )
    else:
        row.update(first_seen=None, last_event_at=None, events=0)
    contexts = [Context(f"spark_job:{app}", "ontology", "; ".join(facts), "spark_job")]
    summary = f"{app} ({job['name']}) on {job['cluster_id']} is {job['state']}"
    return _ok("spark_job_details", args, summary, facts, [row], contexts, [app])


# --- actions ---------------------------------------------------------------------------------


def propose_kill(ctx: ToolContext, args: ProposeKillArgs) -> ToolResult:
    """Propose killing each job; a person with the approver role decides, so nothing is
    killed here. A job with a kill already awaiting approval is not proposed twice."""
    loaded = ctx.ontology()
    action = loaded.ontology.action_types.get(KILL_ACTION)
    if action is None:
        raise ToolFailure(f"the ontology declares no {KILL_ACTION} action")
    role = action.approver_role
    path = ctx.settings.warehouse_path
    if not path.is_file():
        raise ToolFailure(f"no warehouse at {path}: run the ingestion first")
    rows: list[dict[str, Any]] = []
    facts: list[str] = []
    with open_warehouse(path) as conn:
        pending = {
            a.target_key: a.action_id
            for a in list_actions(conn, "proposed")
            if a.action_type == KILL_ACTION
        }
        for app in dict.fromkeys(args.application_ids):
            if app in pending:
                status, action_id, detail = "already_proposed", pending[app], None
                facts.append(
                    f"{app} already has kill proposal {action_id} awaiting approval by role {role}"
                )
            else:
                try:
                    action_id = propose(
                        conn,
                        loaded,
                        KILL_ACTION,
                        app,
                        {"reason": args.reason},
                        ctx.actor,
                        args.reason,
                    )
                except ActionError as exc:
                    status, action_id, detail = "not_proposed", None, str(exc)
                    facts.append(f"could not propose killing {app}: {exc}")
                else:
                    status, detail = "proposed", None
                    facts.append(
                        f"proposed {action_id} to kill {app} — awaiting approval by role {role}"
                    )
            rows.append(
                {"application_id": app, "status": status, "action_id": action_id, "detail": detail}
            )
    waiting = [r for r in rows if r["status"] != "not_proposed"]
    refused = len(rows) - len(waiting)
    if not waiting:
        error = "no kill could be proposed: " + "; ".join(
            f"{r['application_id']}: {r['detail']}" for r in rows
        )
        failed = ToolResult.failure("propose_kill", args.model_dump(mode="json"), error)
        return replace(failed, facts=facts, rows=_plain(rows))
    summary = (
        f"{len(waiting)} kill(s) awaiting approval by role {role}; nothing is killed until "
        "then" + (f"; {refused} could not be proposed" if refused else "")
    )
    subjects = [r["application_id"] for r in waiting]
    return _ok("propose_kill", args, summary, facts, rows, [], subjects)


# --- knowledge -------------------------------------------------------------------------------


def _search(ctx: ToolContext, args: SearchArgs, tool: str, source: str) -> ToolResult:
    hits = ctx.retriever().search(args.query, args.k, Filters(source=source))
    rows = [
        {
            "chunk_id": h.chunk.chunk_id,
            "doc_id": h.doc_id,
            "heading": h.chunk.heading,
            "cluster_id": h.chunk.cluster_id,
            "score": round(h.score, 5),
            "vector_rank": h.vector_rank,
            "lexical_rank": h.lexical_rank,
        }
        for h in hits
    ]
    facts = [h.citation() for h in hits]
    contexts = [Context(h.chunk.chunk_id, source, h.chunk.text, h.citation()) for h in hits]
    documents = documents_in_order(hits)
    summary = (
        f"{len(hits)} {source} passage(s) from {', '.join(documents)}"
        if hits
        else f"no {source} matches the question"
    )
    return _ok(tool, args, summary, facts, rows, contexts, documents)


def search_runbooks(ctx: ToolContext, args: SearchArgs) -> ToolResult:
    """Runbook sections for a question: what to do, step by step."""
    return _search(ctx, args, "search_runbooks", "runbook")


def search_incidents(ctx: ToolContext, args: SearchArgs) -> ToolResult:
    """Past incidents like the question: what happened before and how it was resolved."""
    return _search(ctx, args, "search_incidents", "incident")


# --- the registry ----------------------------------------------------------------------------

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "cluster_utilisation",
            "CPU and memory utilisation per cluster (workers' mean and all hosts), the hottest "
            "host, the fullest disk, unhealthy hosts and the capacity (vcores, memory, HDFS). "
            "Use for 'how busy is the cluster', 'did utilisation drop' and 'how big is it'.",
            ClusterUtilisationArgs,
            cluster_utilisation,
        ),
        Tool(
            "find_hosts",
            "Hosts with their CPU, memory and disk %, status, role and rack, filtered by "
            "cluster, host, role, status (or not_healthy), rack and minimum CPU/memory/disk, "
            "highest first. Use for 'which host is hottest', 'is this disk full', 'which hosts "
            "are degraded'.",
            FindHostsArgs,
            find_hosts,
        ),
        Tool(
            "ontology_neighbours",
            "Objects linked to an ontology object (cluster, host, spark_job, runbook, incident, "
            "alert), nearest first.",
            NeighboursArgs,
            ontology_neighbours,
        ),
        Tool(
            "top_spark_jobs",
            "The Spark jobs using the most resources, ranked by CPU share, then vcores, then "
            "memory; running jobs by default.",
            TopSparkJobsArgs,
            top_spark_jobs,
        ),
        Tool(
            "find_spark_jobs",
            "Spark jobs filtered by cluster, state(s), user, queue, name, driver host, id and "
            "recency (hours before the newest data), ranked by CPU share, memory, vcores, start "
            "time or runtime, with the total and per-queue vcores and memory of the matches and "
            "the cluster's capacity.",
            FindSparkJobsArgs,
            find_spark_jobs,
        ),
        Tool(
            "spark_job_details",
            "Everything known about one Spark application: state, resources, driver, recent "
            "CPU share.",
            SparkJobDetailsArgs,
            spark_job_details,
        ),
        Tool(
            "propose_kill",
            "Propose killing Spark applications. Only proposes: a person with the approver "
            "role must approve before anything is killed.",
            ProposeKillArgs,
            propose_kill,
        ),
        Tool(
            "search_runbooks",
            "Search the operations runbooks for what to do in a situation.",
            SearchArgs,
            search_runbooks,
        ),
        Tool(
            "search_incidents",
            "Search past incidents for similar cases, their root causes and resolutions.",
            SearchArgs,
            search_incidents,
        ),
    )
}
