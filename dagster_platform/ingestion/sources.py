"""The sample sources, declared once: file, format, columns with types and rules, keys and
references. Readers, validation suites, warehouse tables and assets are all derived from here,
so a new source is a new entry, not new code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["string", "int", "float", "timestamp", "date", "string_list"]
SourceFormat = Literal["csv", "jsonl", "markdown"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType = "string"
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class Reference:
    """Every value of `column` (each element, for a list column) must exist in one of the
    `targets`, given as (table, key column) pairs."""

    column: str
    targets: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Ordering:
    """`later` must be strictly after `earlier` wherever both are present."""

    later: str
    earlier: str


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: str
    format: SourceFormat
    primary_key: str
    columns: tuple[Column, ...]
    description: str
    references: tuple[Reference, ...] = ()
    orderings: tuple[Ordering, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def upstream_tables(self) -> list[str]:
        tables = [table for r in self.references for table, _ in r.targets]
        return sorted(set(tables), key=tables.index)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


PCT = {"min": 0.0, "max": 100.0}
LANGUAGES = ("ko", "en")
SEVERITIES = ("sev1", "sev2", "sev3", "sev4")

CLUSTERS = SourceSpec(
    name="clusters",
    path="clusters.csv",
    format="csv",
    primary_key="cluster_id",
    description="The watched Hadoop/YARN clusters: capacity, environment and owning team.",
    columns=(
        Column("cluster_id"),
        Column("name"),
        Column("environment", allowed=("prod", "staging", "dev")),
        Column("region"),
        Column("resource_manager_url"),
        Column("total_vcores", "int", min=1),
        Column("total_memory_gb", "float", min=1),
        Column("hdfs_capacity_tb", "float", min=0),
        Column("owner_team"),
        Column("description", required=False),
    ),
)

HOSTS = SourceSpec(
    name="hosts",
    path="hosts.csv",
    format="csv",
    primary_key="host_id",
    description="Every host of every cluster with its role and last utilisation snapshot.",
    columns=(
        Column("host_id"),
        Column("cluster_id"),
        Column("role", allowed=("master", "worker", "edge", "kafka")),
        Column("rack"),
        Column("ip_address"),
        Column("vcores", "int", min=1),
        Column("memory_gb", "float", min=1),
        Column("disk_tb", "float", min=0),
        Column("os"),
        Column("status", allowed=("healthy", "degraded", "maintenance", "decommissioned")),
        Column("cpu_usage_pct", "float", **PCT),
        Column("memory_usage_pct", "float", **PCT),
        Column("disk_usage_pct", "float", **PCT),
    ),
    references=(Reference("cluster_id", (("clusters", "cluster_id"),)),),
)

SPARK_JOBS = SourceSpec(
    name="spark_jobs",
    path="spark_jobs.csv",
    format="csv",
    primary_key="application_id",
    description="Spark applications on YARN: queue, user, state, run time and resource share.",
    columns=(
        Column("application_id"),
        Column("cluster_id"),
        Column("name"),
        Column("queue"),
        Column("user"),
        Column(
            "state",
            allowed=("NEW", "SUBMITTED", "ACCEPTED", "RUNNING", "FINISHED", "FAILED", "KILLED"),
        ),
        Column("start_time", "timestamp"),
        Column("end_time", "timestamp", required=False),
        Column("vcores", "int", min=1),
        Column("memory_gb", "float", min=0, max=None),
        Column("cpu_share_pct", "float", **PCT),
        Column("driver_host", required=False),
    ),
    references=(
        Reference("cluster_id", (("clusters", "cluster_id"),)),
        Reference("driver_host", (("hosts", "host_id"),)),
    ),
    orderings=(Ordering(later="end_time", earlier="start_time"),),
)

RUNBOOKS = SourceSpec(
    name="runbooks",
    path="runbooks",
    format="markdown",
    primary_key="runbook_id",
    description="Operation manuals in Markdown with YAML front matter, in Korean and English.",
    columns=(
        Column("runbook_id"),
        Column("title"),
        Column("language", allowed=LANGUAGES),
        Column("tags", "string_list"),
        Column("applies_to", "string_list", required=False),
        Column("severity", required=False, allowed=SEVERITIES),
        Column("last_reviewed", "date", required=False),
        Column("body"),
        Column("file"),
    ),
)

INCIDENTS = SourceSpec(
    name="incidents",
    path="incidents.jsonl",
    format="jsonl",
    primary_key="incident_id",
    description="Past incidents: symptoms, affected hosts and jobs, root cause and resolution.",
    columns=(
        Column("incident_id"),
        Column("cluster_id"),
        Column("severity", allowed=SEVERITIES),
        Column("opened_at", "timestamp"),
        Column("resolved_at", "timestamp", required=False),
        Column("title"),
        Column("symptoms"),
        Column("affected_hosts", "string_list"),
        Column("affected_jobs", "string_list"),
        Column("root_cause"),
        Column("resolution"),
        Column("runbook_id", required=False),
        Column("language", allowed=LANGUAGES),
        Column("tags", "string_list"),
    ),
    references=(
        Reference("cluster_id", (("clusters", "cluster_id"),)),
        Reference("affected_hosts", (("hosts", "host_id"),)),
        Reference("runbook_id", (("runbooks", "runbook_id"),)),
    ),
    orderings=(Ordering(later="resolved_at", earlier="opened_at"),),
)

GOLDEN_QUESTIONS = SourceSpec(
    name="golden_questions",
    path="golden_questions.jsonl",
    format="jsonl",
    primary_key="question_id",
    description="Questions with the route and the facts or documents a good answer needs.",
    columns=(
        Column("question_id"),
        Column("question"),
        Column("language", allowed=LANGUAGES),
        Column("route", allowed=("infra", "data", "guide")),
        Column("expected_facts", "string_list"),
        Column("expected_doc_ids", "string_list"),
        Column("scenario_step", "int", required=False, min=1, max=5),
        Column("source", allowed=("seed-004", "curated")),
        Column("expected_tools", "string_list", required=False),
    ),
    references=(
        Reference("expected_doc_ids", (("runbooks", "runbook_id"), ("incidents", "incident_id"))),
    ),
)

SOURCES: tuple[SourceSpec, ...] = (
    CLUSTERS,
    HOSTS,
    SPARK_JOBS,
    RUNBOOKS,
    INCIDENTS,
    GOLDEN_QUESTIONS,
)
