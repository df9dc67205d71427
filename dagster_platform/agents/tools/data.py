"""The data agent's tools: Spark jobs found, ranked and shown, and kills proposed.

Job windows count back from the newest job time in the data, never the wall clock, so a frozen
snapshot and a live system answer alike. `propose_kill` alone writes, and only proposals: a
person with the approver role approves outside any tool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import duckdb
from pydantic import Field, StringConstraints, field_validator

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
from dagster_platform.lib.warehouse import key_values, open_warehouse, quote
from dagster_platform.ontology.actions import ActionError, list_actions, propose
from dagster_platform.ontology.build import typed_select
from dagster_platform.ontology.objects import read_object, with_functions

KILL_ACTION = "kill_spark_job"


def approve_command(action_id: str = "ACTION_ID", by: str = "USER") -> str:
    """The command a person runs to approve a proposal (a test parses it against the CLI)."""
    return f"dagster-platform actions approve {action_id} --by {by}"


MAX_QUEUES = 10  # per-queue totals shown with a job search
MAX_HELD_QUEUES, MAX_HOLDERS = 3, 3  # the running jobs shown for the queues that jobs wait in
WAITING = ("SUBMITTED", "ACCEPTED")
JobState = Literal["SUBMITTED", "ACCEPTED", "RUNNING", "FINISHED", "FAILED", "KILLED"]
ApplicationId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]


def _upper_text(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


JobOrder = Literal["cpu_share", "memory", "vcores", "start_time", "runtime"]


# --- jobs ------------------------------------------------------------------------------------


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


def find_spark_jobs(ctx: ToolContext, args: FindSparkJobsArgs) -> Findings:
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
            (as_of,) = conn.execute(f"SELECT max(as_of) FROM ({view})").fetchone()
            details = {"matching": 0, "scope": _jobs_scope(args), "as_of": _plain(as_of)}
            return Findings(f"no {_jobs_scope(args)}", details=details)
        queues = _rows(
            conn.execute(
                f"SELECT queue, count(*) AS jobs, sum(vcores) AS vcores, "
                f"sum(memory_gb) AS memory_gb FROM ({view}) WHERE {where} "
                "GROUP BY queue ORDER BY memory_gb DESC NULLS LAST, queue",
                params,
            )
        )
        capacity = _capacity(conn).get(args.cluster_id or "", {})
        holders, held = _queue_holders(conn, view, found)
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
    totals, details = _job_totals(args, found[0]["matching"], queues, capacity)
    facts += totals
    facts += holders
    details |= {"order_by": args.order_by, "as_of": _plain(found[0]["as_of"]), "held": held}
    if args.since_hours is not None or args.order_by == "runtime":
        facts.append(
            f"times count back from the newest job time in the data, {_minute(found[0]['as_of'])}"
        )
    summary = f"top {len(found)} of {found[0]['matching']} {_jobs_scope(args)} {order_text}"
    subjects = [r["application_id"] for r in found]
    return Findings(summary, facts, rows, contexts, subjects, details)


def _job_totals(
    args: FindSparkJobsArgs,
    matching: int,
    queues: Sequence[Mapping[str, Any]],
    capacity: Mapping[str, Any],
) -> tuple[list[str], dict[str, Any]]:
    """What the matching jobs hold in all and per queue, against the cluster's capacity; the
    total names its scope (states, cluster, filters) so that no sum reads as the cluster's."""
    vcores = sum(q["vcores"] or 0 for q in queues)
    memory = sum(q["memory_gb"] or 0.0 for q in queues)
    totals: dict[str, Any] = {
        "matching": matching,
        "vcores": vcores,
        "memory_gb": round(memory, 1),
        "scope": _jobs_scope(args),
        "capacity_vcores": capacity.get("total_vcores"),
        "capacity_memory_gb": capacity.get("total_memory_gb"),
        "queues": [
            {
                "queue": q["queue"],
                "jobs": q["jobs"],
                "vcores": q["vcores"] or 0,
                "memory_gb": _round(q["memory_gb"] or 0.0),
            }
            for q in queues[:MAX_QUEUES]
        ],
    }
    total = f"{matching} {_jobs_scope(args)} in all: {vcores} vcores, {_num(memory)} GB memory"
    if capacity.get("total_vcores") and capacity.get("total_memory_gb"):
        cap_vcores, cap_memory = capacity["total_vcores"], capacity["total_memory_gb"]
        total += f"; {args.cluster_id} capacity {cap_vcores} vcores, {_num(cap_memory)} GB memory"
        if args.state == ["RUNNING"]:
            totals["vcores_pct"] = round(vcores / cap_vcores * 100, 1)
            totals["memory_pct"] = round(memory / cap_memory * 100, 1)
            total += (
                f" ({totals['vcores_pct']:.1f}% of the vcores and "
                f"{totals['memory_pct']:.1f}% of the memory held)"
            )
    facts = [total]
    facts += [
        f"queue {q['queue']}: {q['jobs']} job(s), {q['vcores'] or 0} vcores, "
        f"{_num(q['memory_gb'] or 0.0)} GB memory"
        for q in queues[:MAX_QUEUES]
    ]
    return facts, totals


def _queue_holders(
    conn: duckdb.DuckDBPyConnection, view: str, found: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """For jobs waiting for resources, what runs in their queue: the answer to "why hasn't it
    started", from the same view; as facts and as rows (queue, cluster, the holders)."""
    waiting: dict[tuple[str, str], int] = {}
    for r in found:
        if r["state"] in WAITING and r["cluster_id"] and r["queue"]:
            key = (r["cluster_id"], r["queue"])
            waiting[key] = waiting.get(key, 0) + 1
    if not waiting:
        return [], []
    running = _rows(
        conn.execute(
            f"SELECT * FROM ({view}) WHERE state = 'RUNNING' "
            "AND list_contains($keys, cluster_id || ' ' || queue) "
            "ORDER BY memory_gb DESC NULLS LAST, vcores DESC NULLS LAST, application_id",
            {"keys": [f"{c} {q}" for c, q in waiting]},
        )
    )
    facts, structured = [], []
    for (cluster, queue), count in list(waiting.items())[:MAX_HELD_QUEUES]:
        held = [r for r in running if (r["cluster_id"], r["queue"]) == (cluster, queue)]
        structured.append(
            {
                "cluster_id": cluster,
                "queue": queue,
                "waiting": count,
                "holders": [
                    {k: r[k] for k in ("application_id", "name", "user", "vcores", "memory_gb")}
                    for r in held[:MAX_HOLDERS]
                ],
                "held_by": len(held),
            }
        )
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
    return facts, structured


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
            raise unknown_name(what, value, sorted(known))
    if args.name is not None:
        names = [r[0] for r in conn.execute(f"SELECT DISTINCT name FROM ({view})").fetchall()]
        if not any(args.name.lower() in (n or "").lower() for n in names):
            raise unknown_name("job name", args.name, sorted(n for n in names if n))


FIND_SPARK_JOBS = Tool(
    "find_spark_jobs",
    "Spark jobs filtered by cluster, state(s), user, queue, name, driver host, id and "
    "recency (hours before the newest data), ranked by CPU share, memory, vcores, start "
    "time or runtime, with the total and per-queue vcores and memory of the matches and "
    "the cluster's capacity.",
    FindSparkJobsArgs,
    find_spark_jobs,
)


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


def top_spark_jobs(ctx: ToolContext, args: TopSparkJobsArgs) -> Findings:
    """The Spark jobs using the most of their cluster: `find_spark_jobs` by CPU share, kept
    under its own name for the scenario that ranks, then proposes kills. The rows are the ones
    `propose_kill` checks, so a job ranked here as running can be proposed."""
    return find_spark_jobs(
        ctx,
        FindSparkJobsArgs(
            cluster_id=args.cluster_id,
            state=[args.state] if args.state else None,
            limit=args.n,
        ),
    )


TOP_SPARK_JOBS = Tool(
    "top_spark_jobs",
    "The Spark jobs using the most resources, ranked by CPU share, then vcores, then "
    "memory; running jobs by default.",
    TopSparkJobsArgs,
    top_spark_jobs,
)


class SparkJobDetailsArgs(_Arguments):
    application_id: ApplicationId = Field(description="e.g. application_1794712500000_0488.")


def spark_job_details(ctx: ToolContext, args: SparkJobDetailsArgs) -> Findings:
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
    return Findings(summary, facts, [row], contexts, [app])


SPARK_JOB_DETAILS = Tool(
    "spark_job_details",
    "Everything known about one Spark application: state, resources, driver, recent CPU share.",
    SparkJobDetailsArgs,
    spark_job_details,
)


# --- actions ---------------------------------------------------------------------------------


class ProposeKillArgs(_Arguments):
    application_ids: list[ApplicationId] = Field(
        min_length=1, max_length=10, description="The Spark applications to kill."
    )
    reason: str = Field(
        min_length=1, max_length=500, description="Why they must be killed, for the approver."
    )


def propose_kill(ctx: ToolContext, args: ProposeKillArgs) -> Findings:
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
        raise ToolFailure(error, facts, rows, {"approver_role": role})
    summary = (
        f"{len(waiting)} kill(s) awaiting approval by role {role}; nothing is killed until "
        "then" + (f"; {refused} could not be proposed" if refused else "")
    )
    subjects = [r["application_id"] for r in waiting]
    return Findings(summary, facts, rows, [], subjects, {"approver_role": role})


PROPOSE_KILL = Tool(
    "propose_kill",
    "Propose killing Spark applications. Only proposes: a person with the approver "
    "role must approve before anything is killed.",
    ProposeKillArgs,
    propose_kill,
)

AGENT = Agent("data", (TOP_SPARK_JOBS, FIND_SPARK_JOBS, SPARK_JOB_DETAILS, PROPOSE_KILL))
