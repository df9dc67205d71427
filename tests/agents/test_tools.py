"""The agents' tools against a real DuckDB warehouse (the sample, plus landed metrics and Spark
events rolled up by the real rollups), the real ontology, and a real hybrid retriever over the
sample runbooks and incidents (BM25; the vector side holds nothing here)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from dagster_platform.agents.classifier import load_routes
from dagster_platform.agents.tools import (
    AGENT_TOOLS,
    NO_UTILISATION,
    TOOLS,
    ToolContext,
    ToolResult,
)
from dagster_platform.kafka.rollups import ROLLUPS, refresh
from dagster_platform.knowledge.documents import ChunkSet, chunk_incidents, chunk_runbooks, dedupe
from dagster_platform.knowledge.lexical import LexicalIndex
from dagster_platform.knowledge.retriever import HybridRetriever
from dagster_platform.ontology.build import build_links, build_objects, record_build
from dagster_platform.ontology.loader import load_ontology
from dagster_platform.ontology.versioning import version_of
from dagster_platform.settings import Settings
from tests.support.state import ONTOLOGY_DIR, SAMPLE_DIR

APP = "application_1794712500000_{}"
TOP_ETL = [APP.format("0488"), APP.format("0492"), APP.format("0497")]
ML_JOB = "application_1794191400000_0538"  # analytics-prod, RUNNING at 27.4 % in the inventory
ENDED_JOB = "application_1794191400000_0541"  # RUNNING in the inventory, FINISHED on the stream
LATEST = datetime(2026, 11, 20, 8, 59, tzinfo=UTC)
QUESTION = "클러스터 가동율이 높을때 어떻게 해야되?"

# host → (cluster, CPU before the latest minute, CPU in it, memory)
HOSTS = {
    "etl-prod-worker-01": ("etl-prod", 60.0, 96.0, 70.0),
    "etl-prod-worker-02": ("etl-prod", 60.0, 96.0, 70.0),
    "etl-prod-master-01": ("etl-prod", 21.0, 21.0, 40.0),
    "staging-worker-01": ("staging", 30.0, 12.0, 35.0),
}


def _land_metrics(conn: duckdb.DuckDBPyConnection) -> None:
    """Twenty minutes, two samples a minute per host; etl-prod jumps in the last minute."""
    rows = []
    for minute in range(20):
        bucket = LATEST - timedelta(minutes=19 - minute)
        for second in (0, 30):
            for host, (cluster, before, now, memory) in HOSTS.items():
                cpu = now if minute == 19 else before
                ts = bucket + timedelta(seconds=second)
                rows.append((len(rows), f"m{len(rows)}", ts, cluster, host, cpu, memory, 50.0))
    conn.executemany(
        "INSERT INTO host_metrics (kafka_topic, kafka_partition, kafka_offset, event_id, ts, "
        "cluster_id, host_id, cpu_pct, memory_pct, disk_pct) VALUES ('raw', 0, ?, ?, ?, ?, ?, ?, "
        "?, ?)",
        rows,
    )


def _land_job(
    conn: duckdb.DuckDBPyConnection,
    offset: int,
    app: str,
    cluster: str,
    state: str,
    share: float,
    vcores: int,
    memory_gb: float,
) -> None:
    conn.execute(
        "INSERT INTO spark_job_events (kafka_topic, kafka_partition, kafka_offset, event_id, ts, "
        'application_id, cluster_id, name, queue, "user", state, vcores, memory_gb, '
        "cpu_share_pct, driver_host) VALUES ('raw', 1, ?, ?, ?, ?, ?, 'streamed', 'q', 'u', ?, "
        "?, ?, ?, NULL)",
        [offset, f"e{offset}", LATEST, app, cluster, state, vcores, memory_gb, share],
    )
    refresh(conn, next(r for r in ROLLUPS if r.name == "spark_job_state"))


@pytest.fixture(scope="module")
def template(sample_warehouse_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample warehouse with metrics and Spark events landed, rolled up, and the ontology
    built."""
    path = tmp_path_factory.mktemp("tools") / "warehouse.duckdb"
    shutil.copyfile(sample_warehouse_template, path)
    loaded = load_ontology(ONTOLOGY_DIR)
    with duckdb.connect(str(path)) as conn:
        _land_metrics(conn)
        _land_job(conn, 0, TOP_ETL[0], "etl-prod", "RUNNING", 45.0, 192, 1152.0)
        _land_job(conn, 1, ENDED_JOB, "analytics-prod", "FINISHED", 0.0, 16, 98.0)
        for rollup in ROLLUPS:
            refresh(conn, rollup)
        assert build_objects(conn, loaded).published
        assert build_links(conn, loaded).published
        record_build(conn, version_of(loaded.ontology), 0, 0)
    return path


def _settings(state_dir: Path, warehouse: Path | None) -> Settings:
    state_dir.mkdir(parents=True, exist_ok=True)
    if warehouse is not None:
        shutil.copyfile(warehouse, state_dir / "warehouse.duckdb")
    return Settings(state_dir=state_dir, ontology_dir=ONTOLOGY_DIR)


@pytest.fixture(scope="module")
def retriever() -> HybridRetriever:
    corpus = ChunkSet.merge(
        chunk_runbooks(SAMPLE_DIR / "runbooks"), chunk_incidents(SAMPLE_DIR / "incidents.jsonl")
    )
    chunks = dedupe(corpus.chunks).chunks
    index = LexicalIndex.build([c.chunk_id for c in chunks], [c.text for c in chunks])
    return HybridRetriever(chunks, index, lambda query, k, where: [])


@pytest.fixture
def ctx(state_dir: Path, template: Path, retriever: HybridRetriever) -> ToolContext:
    return ToolContext(_settings(state_dir, template), "agent-7", lambda: retriever)


@pytest.fixture
def bare(tmp_path: Path, sample_warehouse: Path) -> ToolContext:
    """The sample as ingestion leaves it: empty rollups, no ontology build."""
    return ToolContext(_settings(tmp_path / "bare", sample_warehouse))


def call(ctx: ToolContext, tool: str, **arguments: object) -> ToolResult:
    result = TOOLS[tool].call(ctx, arguments)
    json.dumps(result.to_dict())  # whatever a tool returns travels as JSON
    assert result.tool == tool
    return result


def failed(result: ToolResult) -> str:
    assert not result.ok and result.error, result
    assert result.summary == result.error.splitlines()[0]
    return result.error


@pytest.fixture
def warehouse(ctx: ToolContext) -> Callable[[], duckdb.DuckDBPyConnection]:
    """A read-only look at the test's warehouse, opened only after the tools have run."""

    def opened() -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(ctx.settings.warehouse_path), read_only=True)

    return opened


# --- the registry ----------------------------------------------------------------------------


def test_every_tool_has_an_openai_function_schema() -> None:
    assert set(TOOLS) == {
        "cluster_utilisation",
        "find_hosts",
        "ontology_neighbours",
        "find_spark_jobs",
        "top_spark_jobs",
        "spark_job_details",
        "propose_kill",
        "search_runbooks",
        "search_incidents",
    }
    for name, tool in TOOLS.items():
        schema = tool.schema()
        assert schema["type"] == "function"
        function = schema["function"]
        assert function["name"] == name and function["description"]
        parameters = function["parameters"]
        assert parameters["type"] == "object" and parameters["additionalProperties"] is False
        assert "title" not in json.dumps(parameters).replace('"title": {', "")
        for prop in parameters["properties"].values():
            assert prop.get("description") or "anyOf" in prop, (name, prop)
    kill = TOOLS["propose_kill"].schema()["function"]["parameters"]
    assert kill["required"] == ["application_ids", "reason"]
    assert kill["properties"]["application_ids"]["maxItems"] == 10
    assert TOOLS["cluster_utilisation"].schema()["function"]["parameters"]["properties"][
        "minutes"
    ] == {
        "default": 15,
        "description": "Length of the window before the latest minute to compare it with.",
        "maximum": 1440,
        "minimum": 1,
        "type": "integer",
    }


def test_every_route_has_an_agent_and_every_tool_one_agent() -> None:
    assert set(AGENT_TOOLS) == set(load_routes())
    declared = [name for names in AGENT_TOOLS.values() for name in names]
    assert sorted(declared) == sorted(TOOLS)


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("cluster_utilisation", {"minutes": 0}, "minutes: Input should be greater than or equal"),
        ("cluster_utilisation", {"minutes": 1441}, "minutes: Input should be less than or equal"),
        ("cluster_utilisation", {"minutes": "soon"}, "minutes: Input should be a valid integer"),
        ("cluster_utilisation", {"cluster": "etl-prod"}, "cluster: unexpected argument (expected"),
        ("cluster_utilisation", {"cluster_id": "  "}, "cluster_id: String should have at least"),
        ("find_hosts", {"limit": 101}, "limit: Input should be less than or equal to 100"),
        ("find_hosts", {"min_cpu_pct": 101}, "min_cpu_pct: Input should be less than or equal"),
        ("find_hosts", {"min_disk_pct": -1}, "min_disk_pct: Input should be greater than or"),
        ("find_hosts", {"order_by": "load"}, "order_by: Input should be 'cpu', 'memory' or"),
        ("find_hosts", {"rack": ""}, "rack: String should have at least 1 character"),
        ("find_spark_jobs", {"state": ["RUNNING", "SLEEPING"]}, "state.1: Input should be"),
        ("find_spark_jobs", {"state": []}, "state: List should have at least 1 item"),
        ("find_spark_jobs", {"since_hours": 0}, "since_hours: Input should be greater than 0"),
        ("find_spark_jobs", {"limit": 51}, "limit: Input should be less than or equal to 50"),
        ("find_spark_jobs", {"order_by": "cpu"}, "order_by: Input should be 'cpu_share',"),
        ("find_spark_jobs", {"queue": "q", "team": "x"}, "team: unexpected argument"),
        ("ontology_neighbours", {"object_type": "host"}, "key: required"),
        ("ontology_neighbours", {"object_type": "host", "key": "h", "depth": 4}, "depth: Input"),
        ("top_spark_jobs", {"n": 21}, "n: Input should be less than or equal to 20"),
        ("top_spark_jobs", {"state": "SLEEPING"}, "state: Input should be 'SUBMITTED'"),
        ("spark_job_details", {}, "application_id: required"),
        ("propose_kill", {"application_ids": [], "reason": "hot"}, "application_ids: List"),
        ("propose_kill", {"application_ids": ["a"] * 11, "reason": "x"}, "at most 10 items"),
        ("propose_kill", {"application_ids": ["a"], "reason": "   "}, "reason: String should"),
        ("propose_kill", {"application_ids": [" "], "reason": "x"}, "application_ids.0: String"),
        ("propose_kill", {"application_ids": "a", "reason": "x"}, "valid list"),
        ("search_runbooks", {"query": ""}, "query: String should have at least 1 character"),
        ("search_incidents", {"query": "disk", "k": 11}, "k: Input should be less than or equal"),
    ],
)
def test_bad_arguments_come_back_as_a_failed_result(
    ctx: ToolContext, tool: str, arguments: dict, expected: str
) -> None:
    result = call(ctx, tool, **arguments)
    error = failed(result)
    assert error.startswith("invalid arguments: ") and expected in error
    assert result.arguments == arguments


def test_arguments_may_come_as_the_json_text_a_model_emits(ctx: ToolContext) -> None:
    tool = TOOLS["top_spark_jobs"]
    assert tool.call(ctx, '{"n": 1, "state": "running"}').subjects == [TOP_ETL[0]]
    assert tool.call(ctx, "").ok  # no arguments at all
    assert "not JSON" in failed(tool.call(ctx, "{n: 1"))
    assert failed(tool.call(ctx, "[1, 2]")) == "arguments must be a JSON object"


# --- utilisation -----------------------------------------------------------------------------


def test_cluster_utilisation_compares_the_latest_minute_with_the_minutes_before(
    ctx: ToolContext,
) -> None:
    result = call(ctx, "cluster_utilisation")
    assert result.ok and result.error is None
    # hottest workers first; analytics-prod has no metrics, so its inventory snapshot stands in
    assert result.subjects == ["etl-prod", "analytics-prod", "staging"]
    assert result.facts[:3] == [
        "etl-prod: CPU 71.0% in the latest minute (15-min average 47.0%, up 24.0 points), "
        "memory 60.0%, 3 hosts reporting; workers' CPU 96.0%, memory 70.0%",
        "etl-prod: hottest host etl-prod-worker-11 CPU 96.4% (inventory snapshot), fullest disk "
        "etl-prod-worker-07 91.3% (inventory snapshot), not healthy: etl-prod-worker-02 "
        "(degraded), etl-prod-worker-07 (degraded)",
        "etl-prod capacity: 576 vcores, 4608 GB memory, 250.8 TB HDFS",
    ]
    assert result.facts[3].startswith("analytics-prod: workers' CPU 46.7%, memory 57.0% (mean ")
    assert result.facts[3].endswith("(inventory snapshot)")
    assert result.facts[6] == (
        "staging: CPU 12.0% in the latest minute (15-min average 30.0%, down 18.0 points), "
        "memory 35.0%, 1 host reporting; workers' CPU 12.0%, memory 35.0%"
    )
    assert (
        "fullest disk staging-worker-01 50.0% (latest minute 2026-11-20 08:59 UTC)"
        in (result.facts[7])
    )
    etl = result.rows[0]
    assert etl == {
        "cluster_id": "etl-prod",
        "source": "latest minute",
        "bucket": "2026-11-20T08:59:00+00:00",
        "hosts": 3,
        "cpu_pct": 71.0,
        "cpu_max_pct": 96.0,
        "memory_pct": 60.0,
        "memory_max_pct": 70.0,
        "window_minutes": 15,
        "cpu_window_avg_pct": 47.0,
        "memory_window_avg_pct": 60.0,
        "cpu_change_points": 24.0,
        "workers_cpu_pct": 96.0,
        "workers_memory_pct": 70.0,
        "workers_cpu_window_avg_pct": 60.0,
        "hottest_host": "etl-prod-worker-11",
        "hottest_host_cpu_pct": 96.4,
        "fullest_disk_host": "etl-prod-worker-07",
        "fullest_disk_pct": 91.3,
        "not_healthy_hosts": ["etl-prod-worker-02 (degraded)", "etl-prod-worker-07 (degraded)"],
        "total_vcores": 576,
        "total_memory_gb": 4608.0,
        "hdfs_capacity_tb": 250.8,
    }
    assert result.summary == (
        "utilisation of 3 cluster(s) (2 from the latest minute 2026-11-20 08:59 UTC, 1 from the "
        "inventory snapshot); highest: etl-prod workers' CPU 96.0%"
    )
    context = result.contexts[0]
    assert context.id == "cluster_utilization_1m:etl-prod:2026-11-20T08:59:00+00:00"
    assert context.source == "warehouse" and context.citation == "cluster_utilization_1m"
    assert result.arguments == {"cluster_id": None, "minutes": 15, "compare_with": None}


def test_cluster_utilisation_of_one_cluster_and_a_short_window(ctx: ToolContext) -> None:
    result = call(ctx, "cluster_utilisation", cluster_id="staging", minutes=1)
    assert result.subjects == ["staging"]
    assert result.rows[0]["window_minutes"] == 1
    assert "1-min average 30.0%, down 18.0 points" in result.facts[0]


def test_a_cluster_that_went_quiet_says_since_when(ctx: ToolContext) -> None:
    with duckdb.connect(str(ctx.settings.warehouse_path)) as conn:
        conn.execute(
            "DELETE FROM cluster_utilization_1m WHERE cluster_id = 'staging' AND bucket > ?",
            [LATEST - timedelta(minutes=5)],
        )
    result = call(ctx, "cluster_utilisation")
    assert result.facts[6].startswith(
        "staging: CPU 30.0% in the latest minute (15-min average 30.0%, unchanged)"
    )
    assert result.facts[6].endswith("; no data since 2026-11-20 08:54 UTC")
    assert not result.facts[0].endswith("UTC")


def test_cluster_utilisation_names_the_clusters_it_knows(ctx: ToolContext) -> None:
    error = failed(call(ctx, "cluster_utilisation", cluster_id="etl-prd"))
    assert error == (
        "unknown cluster 'etl-prd' (known: analytics-prod, etl-prod, staging); nearest: etl-prod"
    )
    with duckdb.connect(str(ctx.settings.warehouse_path)) as conn:
        conn.execute("DELETE FROM hosts WHERE cluster_id = 'analytics-prod'")
    error = failed(call(ctx, "cluster_utilisation", cluster_id="analytics-prod"))
    assert error == (
        "no utilisation data for cluster 'analytics-prod' yet "
        "(clusters with data: etl-prod, staging)"
    )


def test_cluster_utilisation_falls_back_to_the_inventory_snapshot(bare: ToolContext) -> None:
    result = call(bare, "cluster_utilisation")
    assert result.subjects == ["etl-prod", "analytics-prod", "staging"]
    assert result.facts[:3] == [
        "etl-prod: workers' CPU 90.6%, memory 77.4% (mean of 14 workers); all 17 hosts CPU "
        "80.0%, memory 76.5% (inventory snapshot)",
        "etl-prod: hottest host etl-prod-worker-02 CPU 98.6% (inventory snapshot), fullest disk "
        "etl-prod-worker-07 91.3% (inventory snapshot), not healthy: etl-prod-worker-02 "
        "(degraded), etl-prod-worker-07 (degraded)",
        "etl-prod capacity: 576 vcores, 4608 GB memory, 250.8 TB HDFS",
    ]
    assert result.facts[8] == "staging capacity: 160 vcores, 640 GB memory, 38 TB HDFS"
    assert result.summary == (
        "utilisation of 3 cluster(s) (3 from the inventory snapshot); "
        "highest: etl-prod workers' CPU 90.6%"
    )
    row = result.rows[0]
    assert row["source"] == "inventory snapshot" and row["bucket"] is None
    assert (row["workers_cpu_pct"], row["workers_memory_pct"], row["cpu_max_pct"]) == (
        90.6,
        77.4,
        98.6,
    )
    assert row["window_minutes"] is None and row["cpu_change_points"] is None
    assert [c.id for c in result.contexts[:3]] == [
        "hosts:etl-prod:utilisation",
        "hosts:etl-prod:extremes",
        "clusters:etl-prod:capacity",
    ]
    one = call(bare, "cluster_utilisation", cluster_id="analytics-prod")
    assert one.subjects == ["analytics-prod"]
    assert one.facts[-1] == "analytics-prod capacity: 416 vcores, 2048 GB memory, 182.4 TB HDFS"


def test_utilisation_without_any_data(bare: ToolContext, tmp_path: Path) -> None:
    with duckdb.connect(str(bare.settings.warehouse_path)) as conn:
        conn.execute("DELETE FROM hosts")
        conn.execute("DROP TABLE cluster_utilization_1m")
    assert failed(call(bare, "cluster_utilisation")) == NO_UTILISATION
    assert call(bare, "find_hosts").summary == "no hosts"
    nowhere = ToolContext(_settings(tmp_path / "empty", None))
    assert failed(call(nowhere, "cluster_utilisation")).startswith("no warehouse at ")
    assert failed(call(nowhere, "find_hosts")).startswith("no warehouse at ")


# --- hosts -----------------------------------------------------------------------------------


def test_find_hosts_prefers_each_hosts_latest_minute_over_the_snapshot(ctx: ToolContext) -> None:
    result = call(ctx, "find_hosts", limit=3)
    assert result.subjects == ["etl-prod-worker-11", "etl-prod-worker-03", "etl-prod-worker-01"]
    assert result.facts[0] == (
        "etl-prod-worker-11 (worker, etl-prod, rack r03, healthy): CPU 96.4%, memory 81.9%, "
        "disk 57.3% (inventory snapshot)"
    )
    assert result.facts[2] == (
        "etl-prod-worker-01 (worker, etl-prod, rack r01, healthy): CPU 96.0%, memory 70.0%, "
        "disk 50.0% (latest minute 2026-11-20 08:59 UTC)"
    )
    assert [r["source"] for r in result.rows] == [
        "inventory snapshot",
        "inventory snapshot",
        "latest minute",
    ]
    assert result.rows[2]["bucket"] == "2026-11-20T08:59:00+00:00"
    assert [c.citation for c in result.contexts] == ["hosts", "hosts", "host_utilization_1m"]
    assert result.summary == (
        "3 of 40 hosts, highest cpu first (inventory snapshot and latest minute)"
    )
    degraded = call(ctx, "find_hosts", host_id="etl-prod-worker-02")
    assert "CPU 96.0%" in degraded.facts[0] and "degraded" in degraded.facts[0]


def test_find_hosts_filters_and_orders_the_snapshot(bare: ToolContext) -> None:
    hot = call(bare, "find_hosts", cluster_id="etl-prod", role="Worker", min_cpu_pct=95)
    assert hot.subjects == [
        "etl-prod-worker-02",
        "etl-prod-worker-11",
        "etl-prod-worker-03",
        "etl-prod-worker-05",
    ]
    assert hot.summary == (
        "4 of 4 hosts of etl-prod with role worker with CPU ≥ 95%, highest cpu first "
        "(inventory snapshot)"
    )
    assert hot.arguments["role"] == "worker"
    disk = call(bare, "find_hosts", min_disk_pct=80, order_by="disk")
    assert disk.subjects == ["etl-prod-worker-07", "analytics-prod-kafka-02"]
    assert disk.facts[0] == (
        "etl-prod-worker-07 (worker, etl-prod, rack r02, degraded): CPU 86.9%, memory 72.9%, "
        "disk 91.3% (inventory snapshot)"
    )
    memory = call(bare, "find_hosts", cluster_id="etl-prod", order_by="memory", limit=1)
    assert memory.subjects == ["etl-prod-worker-02"] and memory.rows[0]["memory_pct"] == 84.1
    unwell = ["etl-prod-worker-02", "etl-prod-worker-07", "analytics-prod-kafka-02"]
    for spelling in ("not_healthy", "not healthy", "Unhealthy", "non-healthy"):
        found = call(bare, "find_hosts", status=spelling)
        assert found.subjects == [*unwell, "staging-worker-04"], spelling
        assert found.arguments["status"] == "not_healthy"
    rack = call(bare, "find_hosts", cluster_id="etl-prod", rack="r01", status="not_healthy")
    assert rack.subjects == ["etl-prod-worker-02"]
    assert call(bare, "find_hosts", status="MAINTENANCE").subjects == ["staging-worker-04"]
    none = call(bare, "find_hosts", cluster_id="staging", min_cpu_pct=99)
    assert none.ok and none.subjects == [] and none.facts == []
    assert none.summary == "no hosts of staging with CPU ≥ 99%"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"cluster_id": "etl-prd"}, "unknown cluster 'etl-prd' (known: analytics-prod, "),
        ({"host_id": "etl-prod-worker-99"}, "unknown host 'etl-prod-worker-99' (known: "),
        ({"role": "workers"}, "unknown role 'workers' (known: edge, kafka, master, worker)"),
        ({"rack": "r99"}, "unknown rack 'r99' (known: r01, r02, r03, r04, r05, r06)"),
        ({"status": "sick"}, "unknown status 'sick' (known: degraded, healthy, maintenance; or"),
    ],
)
def test_find_hosts_names_what_it_knows(bare: ToolContext, arguments: dict, expected: str) -> None:
    error = failed(call(bare, "find_hosts", **arguments))
    assert error.startswith(expected)
    if "host_id" in arguments:
        assert "etl-prod-worker-07" in error and "staging-kafka-01" in error


# --- ontology and Spark jobs -----------------------------------------------------------------


def test_ontology_neighbours_follow_the_links(ctx: ToolContext) -> None:
    result = call(ctx, "ontology_neighbours", object_type="host", key="etl-prod-worker-02")
    assert "cluster:etl-prod" in result.subjects
    assert "host:etl-prod-worker-02 (etl-prod-worker-02 (worker, etl-prod))" in result.summary
    jobs = call(
        ctx,
        "ontology_neighbours",
        object_type="host",
        key="etl-prod-edge-01",
        link_type="driver_on",
    )
    assert f"spark_job:{TOP_ETL[0]}" in jobs.subjects
    assert all(row["link_types"] == ["driver_on"] and row["depth"] == 1 for row in jobs.rows)
    assert all(c.source == "ontology" for c in jobs.contexts)
    two_hops = call(
        ctx, "ontology_neighbours", object_type="host", key="etl-prod-worker-02", depth=2
    )
    assert len(two_hops.subjects) == 50 and "showing the nearest 50" in two_hops.summary


def test_ontology_neighbours_failures(ctx: ToolContext, bare: ToolContext) -> None:
    missing = failed(call(ctx, "ontology_neighbours", object_type="host", key="nope"))
    assert missing == "no host 'nope' in the ontology"
    kind = failed(call(ctx, "ontology_neighbours", object_type="rack", key="r01"))
    assert kind == "unknown object type 'rack'"
    link = call(
        ctx, "ontology_neighbours", object_type="host", key="etl-prod-worker-02", link_type="x"
    )
    assert "x" in failed(link)
    unbuilt = failed(call(bare, "ontology_neighbours", object_type="cluster", key="etl-prod"))
    assert "has not been built" in unbuilt


def test_top_spark_jobs_rank_by_cpu_share_with_the_stream_over_the_inventory(
    ctx: ToolContext,
) -> None:
    result = call(ctx, "top_spark_jobs")
    assert result.subjects == [TOP_ETL[0], ML_JOB, TOP_ETL[1]]  # 0488's share is streamed: 45 %
    etl = call(ctx, "top_spark_jobs", cluster_id="etl-prod")
    assert etl.subjects == TOP_ETL
    assert etl.facts[0] == (
        f"1. {TOP_ETL[0]} streamed on etl-prod in q by u (RUNNING): CPU share 45.0%, 192 "
        "vcores, 1152 GB memory, driver on etl-prod-edge-01, started 2026-11-20 08:59 UTC, "
        "active for 0 min"
    )
    assert etl.facts[1] == (
        f"2. {TOP_ETL[1]} orders_clickstream_join on etl-prod in root.etl.daily by airflow "
        "(RUNNING): CPU share 23.8%, 120 vcores, 960 GB memory, driver on etl-prod-worker-03, "
        "started 2026-11-20 06:03 UTC, active for 2.9 h"
    )
    assert etl.facts[3] == (
        "14 RUNNING Spark jobs on etl-prod in all: 564 vcores, 3264 GB memory; "
        "etl-prod capacity 576 vcores, "
        "4608 GB memory (97.9% of the vcores and 70.8% of the memory held)"
    )
    assert etl.arguments == {"n": 3, "cluster_id": "etl-prod", "state": "RUNNING"}
    assert etl.rows[0]["last_event_at"] == "2026-11-20T08:59:00+00:00"
    assert etl.rows[1]["last_event_at"] is None  # known from the inventory only
    assert etl.summary == (
        "top 3 of 14 RUNNING Spark jobs on etl-prod by CPU share, then vcores, then memory"
    )
    assert ENDED_JOB not in call(ctx, "top_spark_jobs", n=20).subjects
    finished = call(ctx, "top_spark_jobs", state="finished", cluster_id="analytics-prod", n=20)
    assert len(finished.rows) == 20
    assert all(row["state"] == "FINISHED" for row in finished.rows)


def test_top_spark_jobs_break_ties_on_vcores_then_memory(ctx: ToolContext) -> None:
    with duckdb.connect(str(ctx.settings.warehouse_path)) as conn:
        _land_job(conn, 10, TOP_ETL[2], "etl-prod", "RUNNING", 23.8, 120, 961.0)
        _land_job(conn, 11, APP.format("0487"), "etl-prod", "RUNNING", 23.8, 121, 1.0)
    result = call(ctx, "top_spark_jobs", cluster_id="etl-prod", n=4)
    assert result.subjects == [TOP_ETL[0], APP.format("0487"), TOP_ETL[2], TOP_ETL[1]]


def test_top_spark_jobs_on_an_unknown_or_idle_cluster(ctx: ToolContext) -> None:
    assert "unknown cluster 'nope'" in failed(call(ctx, "top_spark_jobs", cluster_id="nope"))
    idle = call(ctx, "top_spark_jobs", cluster_id="staging", state="SUBMITTED")
    assert idle.ok and idle.subjects == [] and idle.summary == "no SUBMITTED Spark jobs on staging"


def test_find_spark_jobs_filters_the_frozen_sample(bare: ToolContext) -> None:
    failed_jobs = call(
        bare, "find_spark_jobs", cluster_id="etl-prod", state="failed", since_hours=24
    )
    assert failed_jobs.subjects == [APP.format("0446"), APP.format("0439"), APP.format("0468")]
    assert failed_jobs.arguments["state"] == ["FAILED"]
    assert failed_jobs.facts[-1] == (
        "times count back from the newest job time in the data, 2026-11-20 08:52 UTC"
    )
    assert failed_jobs.facts[1].endswith(
        "started 2026-11-19 16:45 UTC, ended 2026-11-19 17:00 UTC after 15 min"
    )
    assert failed_jobs.summary == (
        "top 3 of 3 FAILED Spark jobs on etl-prod active in the last 24 h of the data by CPU "
        "share, then vcores, then memory"
    )
    active = call(
        bare, "find_spark_jobs", cluster_id="analytics-prod", state=["running", "ACCEPTED"]
    )
    assert set(active.subjects) >= {ML_JOB, "application_1794191400000_0542"}
    assert all(row["state"] in ("RUNNING", "ACCEPTED") for row in active.rows)
    longest = call(bare, "find_spark_jobs", state="RUNNING", order_by="runtime", limit=1)
    assert longest.subjects == ["application_1794191400000_0383"]
    assert (
        "kafka_events_ingest_stream" in longest.facts[0] and "active for 79.8 h" in longest.facts[0]
    )
    assert longest.rows[0]["runtime_hours"] == 79.8
    newest = call(bare, "find_spark_jobs", name="SPARK35_upgrade", order_by="start_time", limit=2)
    assert newest.subjects == ["application_1794790800000_0052", "application_1794790800000_0050"]
    adhoc = call(
        bare, "find_spark_jobs", cluster_id="analytics-prod", queue="adhoc", state="RUNNING"
    )
    assert adhoc.subjects == [ENDED_JOB] and " by hlee (RUNNING)" in adhoc.facts[0]
    drivers = call(bare, "find_spark_jobs", driver_host="ETL-PROD-WORKER-07", state="RUNNING")
    assert drivers.subjects == [APP.format("0491"), APP.format("0504")]
    one = call(bare, "find_spark_jobs", application_id=APP.format("0502"))
    assert one.subjects == [APP.format("0502")] and one.rows[0]["user"] == "jkim"


def test_find_spark_jobs_sums_what_the_matches_hold(bare: ToolContext) -> None:
    result = call(
        bare, "find_spark_jobs", cluster_id="etl-prod", state="RUNNING", order_by="memory"
    )
    assert result.subjects[:2] == [APP.format("0488"), APP.format("0492")]
    assert len(result.subjects) == 10
    assert result.facts[10:] == [
        "14 RUNNING Spark jobs on etl-prod in all: 564 vcores, 3264 GB memory; "
        "etl-prod capacity 576 vcores, "
        "4608 GB memory (97.9% of the vcores and 70.8% of the memory held)",
        "queue root.etl.backfill: 5 job(s), 268 vcores, 1512 GB memory",
        "queue root.etl.daily: 3 job(s), 132 vcores, 1008 GB memory",
        "queue root.etl.hourly: 6 job(s), 164 vcores, 744 GB memory",
    ]
    ended = call(bare, "find_spark_jobs", cluster_id="etl-prod", state="KILLED")
    assert "(97.9%" not in ended.facts[len(ended.subjects)]  # ended jobs hold nothing now
    none = call(bare, "find_spark_jobs", user="jkim", state="SUBMITTED")
    assert (
        none.ok and none.subjects == [] and none.summary == "no SUBMITTED Spark jobs of user jkim"
    )


def test_find_spark_jobs_says_what_holds_the_queue_a_job_waits_in(bare: ToolContext) -> None:
    waiting = call(bare, "find_spark_jobs", name="ctr_model_train", state="ACCEPTED")
    assert waiting.subjects == ["application_1794191400000_0542"]
    assert waiting.facts[0].endswith("submitted 2026-11-20 08:50 UTC, waiting for 2 min")
    assert waiting.facts[-1] == (
        "queue root.ml.training on analytics-prod, where 1 shown job(s) wait, is held by 1 "
        f"RUNNING job(s): {ML_JOB} user_embedding_train of svc_ml (128 vcores, 768 GB memory)"
    )
    etl = call(bare, "find_spark_jobs", cluster_id="etl-prod", state="ACCEPTED")
    assert etl.facts[-3].startswith(
        "queue root.etl.backfill on etl-prod, where 1 shown job(s) wait, is held by 5 RUNNING "
        f"job(s): {APP.format('0488')} user_feature_backfill of sypark (192 vcores, 1152 GB"
    )
    assert etl.facts[-3].endswith(" and 2 more")
    with duckdb.connect(str(bare.settings.warehouse_path)) as conn:
        conn.execute("UPDATE spark_jobs SET state = 'FINISHED' WHERE queue = 'root.ml.training'")
        conn.execute(
            "UPDATE spark_jobs SET state = 'ACCEPTED' WHERE application_id = "
            "'application_1794191400000_0542'"
        )
    idle = call(bare, "find_spark_jobs", name="ctr_model_train", state="ACCEPTED")
    assert idle.facts[-1] == (
        "queue root.ml.training on analytics-prod, where 1 shown job(s) wait, has no RUNNING "
        "job: the wait is for the cluster's capacity"
    )
    running = call(bare, "find_spark_jobs", cluster_id="etl-prod", state="RUNNING")
    assert not any(" wait, " in fact for fact in running.facts)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"cluster_id": "etl-prd"}, "unknown cluster 'etl-prd' (known: analytics-prod, "),
        ({"user": "nobody"}, "unknown user 'nobody' (known: airflow, hlee, jkim, "),
        ({"queue": "root.etl.nightly"}, "unknown queue 'root.etl.nightly' (known: root."),
        ({"driver_host": "etl-prod-worker-99"}, "unknown driver host 'etl-prod-worker-99'"),
        ({"application_id": "application_0_0"}, "no Spark application 'application_0_0'"),
    ],
)
def test_find_spark_jobs_names_what_it_knows(
    bare: ToolContext, arguments: dict, expected: str
) -> None:
    assert failed(call(bare, "find_spark_jobs", **arguments)).startswith(expected)


def test_spark_job_tools_without_their_tables_or_ontology(
    bare: ToolContext, tmp_path: Path
) -> None:
    with duckdb.connect(str(bare.settings.warehouse_path)) as conn:
        conn.execute("DROP TABLE spark_job_state")
    error = failed(call(bare, "top_spark_jobs"))
    assert error.startswith("a table is missing from the warehouse (run the ingestion first)")
    assert error.endswith("Table with name spark_job_state does not exist!")
    (tmp_path / "no-ontology").mkdir()
    settings = bare.settings.model_copy(update={"ontology_dir": tmp_path / "no-ontology"})
    error = failed(call(ToolContext(settings), "spark_job_details", application_id=TOP_ETL[0]))
    assert error.startswith("the ontology is invalid: ")


def test_spark_job_details(ctx: ToolContext) -> None:
    result = call(ctx, "spark_job_details", application_id=f" {TOP_ETL[0]} ")
    assert result.subjects == [TOP_ETL[0]]
    (row,) = result.rows
    assert row["state"] == "RUNNING" and row["cpu_share_pct"] == 45.0 and row["events"] == 1
    assert row["recent_cpu_share_pct"] == 45.0
    assert result.summary == f"{TOP_ETL[0]} (streamed) on etl-prod is RUNNING"
    assert any("1 stream events" in fact for fact in result.facts)
    inventory_only = call(ctx, "spark_job_details", application_id=TOP_ETL[1])
    assert inventory_only.rows[0]["events"] == 0
    assert "driver on etl-prod-worker-03" in inventory_only.facts[-1]
    unknown = failed(call(ctx, "spark_job_details", application_id="application_0_0"))
    assert unknown.startswith("no Spark application 'application_0_0'")


# --- proposals -------------------------------------------------------------------------------


def test_propose_kill_only_proposes_and_reports_each_id(ctx: ToolContext, warehouse) -> None:
    ids = [TOP_ETL[0], "application_0_0", ENDED_JOB, TOP_ETL[1], TOP_ETL[0]]
    result = call(ctx, "propose_kill", application_ids=ids, reason="etl-prod CPU above 95 %")
    assert result.ok and result.error is None
    assert result.subjects == [TOP_ETL[0], TOP_ETL[1]]
    by_app = {row["application_id"]: row for row in result.rows}
    assert list(by_app) == [TOP_ETL[0], "application_0_0", ENDED_JOB, TOP_ETL[1]]
    assert [row["status"] for row in result.rows] == [
        "proposed",
        "not_proposed",
        "not_proposed",
        "proposed",
    ]
    assert "does not exist" in by_app["application_0_0"]["detail"]
    assert "precondition not met" in by_app[ENDED_JOB]["detail"]
    action_id = by_app[TOP_ETL[0]]["action_id"]
    assert result.facts[0] == (
        f"proposed {action_id} to kill {TOP_ETL[0]} — awaiting approval by role sre"
    )
    assert result.summary == (
        "2 kill(s) awaiting approval by role sre; nothing is killed until then; "
        "2 could not be proposed"
    )
    with warehouse() as conn:
        log = conn.execute(
            "SELECT target_key, step, actor, detail, parameters FROM action_log ORDER BY sequence"
        ).fetchall()
    assert [(target, step, actor) for target, step, actor, _, _ in log] == [
        (TOP_ETL[0], "proposed", "agent-7"),
        (TOP_ETL[1], "proposed", "agent-7"),
    ]
    assert json.loads(log[0][4]) == {"reason": "etl-prod CPU above 95 %"}

    again = call(ctx, "propose_kill", application_ids=[TOP_ETL[0]], reason="still hot")
    assert again.ok and again.rows[0]["status"] == "already_proposed"
    assert again.rows[0]["action_id"] == action_id
    with warehouse() as conn:
        statuses = conn.execute("SELECT status FROM action_status").fetchall()
    assert statuses == [("proposed",), ("proposed",)]


def test_propose_kill_fails_when_nothing_could_be_proposed(ctx: ToolContext, warehouse) -> None:
    result = call(ctx, "propose_kill", application_ids=["application_0_0", ENDED_JOB], reason="x")
    error = failed(result)
    assert error.startswith("no kill could be proposed: application_0_0: ")
    assert [row["status"] for row in result.rows] == ["not_proposed", "not_proposed"]
    assert result.subjects == []
    with warehouse() as conn:
        assert conn.execute("SELECT count(*) FROM action_log").fetchone() == (0,)


# --- knowledge -------------------------------------------------------------------------------


def test_search_runbooks_and_incidents_keep_to_their_source(ctx: ToolContext) -> None:
    runbooks = call(ctx, "search_runbooks", query=QUESTION, k=3)
    assert runbooks.subjects[0] == "rb-cluster-high-utilization-response"
    assert len(runbooks.contexts) == 3 and all(c.source == "runbook" for c in runbooks.contexts)
    first = runbooks.contexts[0]
    assert first.id == runbooks.rows[0]["chunk_id"]
    assert first.id.startswith("rb-cluster-high-utilization-response#")
    assert first.text.startswith("클러스터 가동율(사용율)이 높을 때의 대응 절차")
    assert first.citation == runbooks.facts[0]
    assert first.citation.startswith("[rb-cluster-high-utilization-response] ")

    incidents = call(ctx, "search_incidents", query="user_feature_backfill CPU 점유")
    assert {"INC-2026-0031", "INC-2026-0055"} <= set(incidents.subjects)
    assert all(c.source == "incident" and c.id.startswith("INC-") for c in incidents.contexts)
    assert incidents.summary.startswith("3 incident passage(s) from INC-")


def test_search_without_a_knowledge_base(ctx: ToolContext, retriever: HybridRetriever) -> None:
    ctx.retriever_factory = None
    assert failed(call(ctx, "search_runbooks", query="disk")) == (
        "the knowledge base is not available to this assistant"
    )
    attempts: list[int] = []

    def flaky() -> HybridRetriever:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("chroma at chroma:8000 refused the connection")
        return retriever

    ctx.retriever_factory = flaky
    down = failed(call(ctx, "search_incidents", query="disk"))
    assert down == (
        "the knowledge base cannot be opened: chroma at chroma:8000 refused the connection"
    )
    assert call(ctx, "search_incidents", query="disk").ok  # opened on the next call, then kept
    assert call(ctx, "search_runbooks", query="disk").ok and len(attempts) == 2


# --- the golden questions --------------------------------------------------------------------

GOLDEN = SAMPLE_DIR / "golden_questions.jsonl"
REASON = "golden question"

# One tool call per infra/data golden question, as a planner would make it: the facts the
# answer must quote have to come out of that call.
GOLDEN_CALLS: dict[str, tuple[str, dict[str, object]]] = {
    "gq-001": ("cluster_utilisation", {}),
    "gq-002": ("top_spark_jobs", {"cluster_id": "etl-prod", "n": 3}),
    "gq-004": ("propose_kill", {"application_ids": TOP_ETL[:2], "reason": REASON}),
    "gq-005": ("cluster_utilisation", {}),
    "gq-006": ("find_hosts", {"host_id": "etl-prod-worker-07"}),
    "gq-007": (
        "find_spark_jobs",
        {"cluster_id": "etl-prod", "state": "FAILED", "since_hours": 24},
    ),
    "gq-009": ("find_hosts", {"status": "not_healthy"}),
    "gq-010": ("find_spark_jobs", {"cluster_id": "etl-prod", "state": "ACCEPTED"}),
    "gq-012": ("find_hosts", {"cluster_id": "etl-prod", "role": "worker", "limit": 1}),
    "gq-013": ("find_spark_jobs", {"queue": "root.etl.backfill", "state": "RUNNING"}),
    "gq-015": ("cluster_utilisation", {"cluster_id": "analytics-prod"}),
    "gq-016": ("find_spark_jobs", {"user": "sypark", "state": "RUNNING"}),
    "gq-018": ("find_hosts", {"host_id": "staging-worker-04"}),
    "gq-019": ("find_spark_jobs", {"driver_host": "etl-prod-worker-07", "state": "RUNNING"}),
    "gq-021": (
        "find_hosts",
        {"cluster_id": "etl-prod", "role": "worker", "min_cpu_pct": 95},
    ),
    "gq-022": ("find_spark_jobs", {"state": "RUNNING", "order_by": "runtime", "limit": 1}),
    "gq-024": ("find_hosts", {"host_id": "etl-prod-master-01"}),
    "gq-025": (
        "find_spark_jobs",
        {"cluster_id": "etl-prod", "state": "KILLED", "since_hours": 72},
    ),
    "gq-027": ("cluster_utilisation", {"cluster_id": "etl-prod"}),
    "gq-028": ("find_spark_jobs", {"cluster_id": "analytics-prod", "state": "RUNNING"}),
    "gq-030": (
        "find_hosts",
        {"cluster_id": "etl-prod", "rack": "r01", "status": "not_healthy"},
    ),
    "gq-031": (
        "find_spark_jobs",
        {"cluster_id": "analytics-prod", "state": "ACCEPTED", "name": "ctr_model_train"},
    ),
    "gq-033": ("cluster_utilisation", {"cluster_id": "etl-prod"}),
    "gq-034": ("find_spark_jobs", {"user": "jkim", "state": "RUNNING"}),
    "gq-036": (
        "find_hosts",
        {"cluster_id": "analytics-prod", "min_disk_pct": 80, "order_by": "disk"},
    ),
    "gq-037": ("find_spark_jobs", {"cluster_id": "etl-prod", "state": "RUNNING"}),
    "gq-039": ("find_hosts", {"host_id": "analytics-prod-worker-03"}),
    "gq-040": (
        "find_spark_jobs",
        {"cluster_id": "staging", "name": "spark35_upgrade_regression", "order_by": "start_time"},
    ),
    "gq-042": ("propose_kill", {"application_ids": [APP.format("0502")], "reason": REASON}),
    "gq-044": ("find_hosts", {"cluster_id": "staging", "role": "worker", "limit": 1}),
    "gq-045": (
        "find_spark_jobs",
        {"name": "clickstream_sessionize", "state": "FAILED", "since_hours": 72},
    ),
    "gq-047": ("find_hosts", {"host_id": "etl-prod-worker-07"}),
    "gq-048": (
        "find_spark_jobs",
        {"cluster_id": "etl-prod", "state": "RUNNING", "order_by": "memory"},
    ),
    "gq-050": (
        "find_spark_jobs",
        {"cluster_id": "analytics-prod", "queue": "adhoc", "state": "RUNNING"},
    ),
}


@pytest.fixture
def frozen(tmp_path: Path, sample_warehouse: Path) -> ToolContext:
    """The evaluation's snapshot: the sample loaded and the ontology built from it, no metrics."""
    loaded = load_ontology(ONTOLOGY_DIR)
    with duckdb.connect(str(sample_warehouse)) as conn:
        assert build_objects(conn, loaded).published
        assert build_links(conn, loaded).published
        record_build(conn, version_of(loaded.ontology), 0, 0)
    return ToolContext(_settings(tmp_path / "frozen", sample_warehouse))


def test_the_tools_produce_the_facts_of_the_golden_questions(frozen: ToolContext) -> None:
    questions = [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]
    asked = {q["question_id"]: q for q in questions if q["route"] in ("infra", "data")}
    assert set(GOLDEN_CALLS) == set(asked)
    expected = covered = 0
    misses = []
    for qid, (tool, arguments) in GOLDEN_CALLS.items():
        result = call(frozen, tool, **arguments)
        assert result.ok, (qid, result.error)
        said = "\n".join([result.summary, *result.facts, *result.subjects])
        for fact in asked[qid]["expected_facts"]:
            expected += 1
            if fact in said:
                covered += 1
            else:
                misses.append(f"{qid} {fact!r} from {tool}({arguments})")
    assert covered / expected >= 0.9, f"{covered}/{expected} facts; missing: {misses}"
