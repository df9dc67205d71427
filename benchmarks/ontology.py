"""Building a million-object ontology: our assets against reading the tables into networkx.

A synthetic Kubernetes-style ontology (nodes, services, pods) backed by Parquet files that
DuckDB writes from `range(n)`: pods run on a node and are instances of a service (links
derived from a property), services call services and pods open flows to pods (links derived
from a file of key pairs). Pods per service are skewed (a few services have thousands), so
the graph has hubs, as real ones do. Each variant runs in its own interpreter, so its peak
RSS is its own:
(a) what the objects, links and graph assets do: check_backing + build_objects, build_links +
    record_build, load_graph + analyse + store_metrics (picture timed apart);
(b) the limit: read `ontology_objects` and `ontology_links` of (a)'s warehouse into pandas and
    `networkx.from_pandas_edgelist` — nothing else.
Then `OntologyQuery.neighbours(depth=2)` from QUERIES random objects, in a third process that
loads the graph once as the query API does (on the connection that built the tables, DuckDB
answers the same lookups about twice as slowly, which no query process sees).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import networkx as nx
import pandas  # noqa: F401  (loaded before any clock starts; `.df()` would import it)

from benchmarks.common import machine
from dagster_platform.ontology.build import (
    LINKS_TABLE,
    OBJECTS_TABLE,
    build_links,
    build_objects,
    check_backing,
    record_build,
)
from dagster_platform.ontology.graph import analyse, load_graph, picture, store_metrics
from dagster_platform.ontology.loader import LoadedOntology, load_ontology
from dagster_platform.ontology.query import OntologyQuery
from dagster_platform.ontology.versioning import version_of

OBJECTS = 1_000_000
LINKS = 3_000_000
QUERIES = 1_000
SEED = 7
CALLS_PER_SERVICE = 3

ONTOLOGY_YAML = """\
object_types:
  node:
    description: A Kubernetes worker node.
    backing: {file: nodes.parquet}
    primary_key: node_name
    title: "{node_name} ({zone})"
    description_template: >-
      Node {node_name} in {zone} with {cpu_cores} cores and {memory_gb} GB of memory.
    properties:
      node_name: {type: string}
      zone: {type: string, allowed: [eu-west-1a, eu-west-1b, eu-west-1c, us-east-1a]}
      cpu_cores: {type: integer, column: cores}
      memory_gb: {type: float}
      ready: {type: boolean}
  service:
    description: The pods behind one name.
    backing: {file: services.parquet}
    primary_key: service_id
    title: "{name} ({team})"
    description_template: Service {name} of {team}, tier {tier}, created on {created_on}.
    properties:
      service_id: {type: string}
      name: {type: string}
      team: {type: string}
      tier: {type: integer}
      created_on: {type: date}
  pod:
    description: A running or finished pod.
    backing: {file: pods.parquet}
    primary_key: pod_id
    title: "{pod_id} on {node_name}"
    description_template: >-
      Pod {pod_id} of {service_id} on {node_name} is {phase} after {restarts} restarts,
      using {cpu_millicores:.1f} millicores since {started_at}.
    properties:
      pod_id: {type: string}
      service_id: {type: string}
      node_name: {type: string}
      phase: {type: string, allowed: [Running, Pending, Succeeded, Failed]}
      restarts: {type: integer}
      cpu_millicores: {type: float}
      started_at: {type: timestamp}

link_types:
  runs_on:
    source: pod
    target: node
    cardinality: many_to_one
    derive: {property: node_name}
  instance_of:
    source: pod
    target: service
    cardinality: many_to_one
    derive: {property: service_id}
  calls:
    source: service
    target: service
    cardinality: many_to_many
    derive: {file: calls.parquet, source_column: caller, target_column: callee}
  connects_to:
    source: pod
    target: pod
    cardinality: many_to_many
    dependency: false
    derive: {file: flows.parquet, source_column: src_pod, target_column: dst_pod}
"""


def sizes(objects: int, links: int) -> dict[str, int]:
    """Objects per type and links per link type; every pod has one node and one service."""
    nodes, services = max(objects // 50, 1), max(objects * 8 // 100, CALLS_PER_SERVICE + 1)
    pods = objects - nodes - services
    calls = CALLS_PER_SERVICE * services
    flows = links - 2 * pods - calls
    if not 0 <= flows < pods * (pods - 1):
        raise ValueError(f"{links} links do not fit {objects} objects (need {2 * pods + calls}+)")
    return {"node": nodes, "service": services, "pod": pods, "calls": calls, "flows": flows}


def _pairs_sql(count: int, ends: int, prefix: str, source: str, target: str) -> str:
    """`count` distinct (source, target) key pairs among `ends` objects, no self-links: the
    k-th pair of source s goes to s + 1 + (hash(s) + k) mod (ends - 1)."""
    far = f"(s + 1 + (hash(s, '{prefix}') % {ends - 1} + k) % {ends - 1}) % {ends}"
    return (
        f"SELECT concat('{prefix}-', s) AS {source}, concat('{prefix}-', {far}) AS {target} "
        f"FROM (SELECT i % {ends} AS s, i // {ends} AS k FROM range({count}) t(i))"
    )


def write_ontology(folder: Path, objects: int, links: int) -> dict[str, int]:
    """The YAML and its Parquet backing files in `folder`; returns `sizes`."""
    n = sizes(objects, links)
    pod_service = (
        f"CAST(floor({n['service']} * pow((hash(i, 'svc') % 1000003) / 1000003.0, 2)) AS BIGINT)"
    )
    tables = {
        "nodes": f"SELECT concat('node-', i) AS node_name, "
        "['eu-west-1a', 'eu-west-1b', 'eu-west-1c', 'us-east-1a'][1 + i % 4] AS zone, "
        "CAST(8 << (i % 4) AS INTEGER) AS cores, 4.0 * (8 << (i % 4)) AS memory_gb, "
        f"hash(i, 'ready') % 50 <> 0 AS ready FROM range({n['node']}) t(i)",
        "services": "SELECT concat('svc-', i) AS service_id, concat('service-', i) AS name, "
        "concat('team-', i % 40) AS team, CAST(1 + i % 3 AS INTEGER) AS tier, "
        f"DATE '2020-01-01' + CAST(i % 1500 AS INTEGER) AS created_on FROM range({n['service']}) "
        "t(i)",
        "pods": f"SELECT concat('pod-', i) AS pod_id, concat('svc-', {pod_service}) AS service_id, "
        f"concat('node-', hash(i, 'node') % {n['node']}) AS node_name, "
        "['Running', 'Running', 'Running', 'Pending', 'Succeeded', 'Failed'][1 + i % 6] AS phase, "
        "CAST(hash(i, 'restarts') % 7 AS INTEGER) AS restarts, "
        "(hash(i, 'cpu') % 40000) / 10.0 AS cpu_millicores, "
        "TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(CAST(hash(i, 't') % 8640000 AS BIGINT))"
        f" AS started_at FROM range({n['pod']}) t(i)",
        "calls": _pairs_sql(n["calls"], n["service"], "svc", "caller", "callee"),
        "flows": _pairs_sql(n["flows"], n["pod"], "pod", "src_pod", "dst_pod"),
    }
    (folder / "ontology.yaml").write_text(ONTOLOGY_YAML, encoding="utf-8")
    with duckdb.connect() as conn:
        for name, select in tables.items():
            conn.execute(f"COPY ({select}) TO '{folder / name}.parquet' (FORMAT parquet)")
    return n


def _memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc. Not ru_maxrss: a child inherits
    its parent's peak through fork and exec, so it would report at least the parent's RSS."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} in /proc/self/status")


def _in_fresh_process(worker: str, **kwargs: Any) -> dict[str, Any]:
    """`worker(**kwargs)` of this module in a new interpreter, so that its peak RSS is its own."""
    code = (
        f"import json, sys\nfrom benchmarks.ontology import {worker}\n"
        f"print(json.dumps({worker}(**json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _link_types(loaded: LoadedOntology) -> dict[str, bool]:
    return {name: link.dependency for name, link in loaded.ontology.link_types.items()}


def ours(folder: str, database: str) -> dict[str, Any]:
    """What the objects, links and graph assets do, phase by phase, with the peak after each."""
    result: dict[str, Any] = {"baseline_mib": _memory_mib("VmRSS"), "peak_after_mib": {}}
    seconds: dict[str, float] = {}
    with duckdb.connect(database) as conn:
        started = time.perf_counter()
        loaded = load_ontology(Path(folder))
        if problems := check_backing(conn, loaded):
            raise RuntimeError(f"the benchmark ontology does not map: {problems}")
        objects = build_objects(conn, loaded)
        seconds["objects"] = time.perf_counter() - started
        result["peak_after_mib"]["objects"] = _memory_mib("VmHWM")

        started = time.perf_counter()
        links = build_links(conn, loaded)
        (built,) = conn.execute(f"SELECT count(*) FROM {OBJECTS_TABLE}").fetchone()
        record_build(conn, version_of(loaded.ontology), int(built), links.total)
        seconds["links"] = time.perf_counter() - started
        result["peak_after_mib"]["links"] = _memory_mib("VmHWM")
        if not (objects.published and links.published):
            raise RuntimeError(f"not published: {objects}, {links.dangling} dangling links")

        started = time.perf_counter()
        graph = load_graph(conn, _link_types(loaded))
        seconds["graph_load"] = time.perf_counter() - started
        result["peak_after_mib"]["graph_load"] = _memory_mib("VmHWM")

        started = time.perf_counter()
        analytics = analyse(graph)
        store_metrics(conn, analytics)
        seconds["analytics"] = time.perf_counter() - started
        result["peak_mib"] = _memory_mib("VmHWM")

        started = time.perf_counter()
        picture(graph, analytics)
        seconds["picture"] = time.perf_counter() - started
    result["seconds"] = {phase: round(s, 3) for phase, s in seconds.items()}
    result["objects_per_type"], result["links_per_type"] = objects.counts, links.counts
    result["graph_nodes"], result["graph_edges"] = graph.nodes, analytics.summary["edges"]
    result["cardinality_violations"] = links.cardinality
    return result


def two_hop(folder: str, database: str, queries: int, seed: int) -> dict[str, Any]:
    """Latency of `neighbours(depth=2)` from random objects, in a process that loads the graph
    once, as the query API does. The first call also builds the graph's (type, key) index, so
    it is timed apart."""
    loaded = load_ontology(Path(folder))
    with duckdb.connect(database, read_only=True) as conn:
        started = time.perf_counter()
        graph = load_graph(conn, _link_types(loaded))
        load_seconds = time.perf_counter() - started
        query = OntologyQuery(conn, loaded, graph=graph)
        nodes = random.Random(seed).sample(range(graph.nodes), queries)
        starts = [graph.ref(node) for node in nodes]
        started = time.perf_counter()
        query.neighbours(*starts[0], depth=2)
        first_ms = (time.perf_counter() - started) * 1000
        latencies, found = [], []
        for object_type, key in starts:
            started = time.perf_counter()
            found.append(len(query.neighbours(object_type, key, depth=2)))
            latencies.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "queries": queries,
        "graph_load_seconds": round(load_seconds, 3),
        "first_ms": round(first_ms, 1),
        "p50_ms": round(cuts[49], 3),
        "p95_ms": round(cuts[94], 3),
        "max_ms": round(max(latencies), 3),
        "neighbours_mean": round(statistics.fmean(found), 1),
        "neighbours_p50": statistics.median(found),
        "neighbours_p95": statistics.quantiles(found, n=100)[94],
        "neighbours_max": max(found),
    }


def limit(database: str) -> dict[str, Any]:
    """Both tables into pandas and the links into a DiGraph: the least any build must do."""
    baseline = _memory_mib("VmRSS")
    with duckdb.connect(database, read_only=True) as conn:
        started = time.perf_counter()
        objects = conn.sql(f"SELECT * FROM {OBJECTS_TABLE}").df()
        links = conn.sql(f"SELECT * FROM {LINKS_TABLE}").df()
        graph = nx.from_pandas_edgelist(
            links, "source_node", "target_node", create_using=nx.DiGraph
        )
        seconds = time.perf_counter() - started
    return {
        "baseline_mib": baseline,
        "peak_mib": _memory_mib("VmHWM"),
        "seconds": round(seconds, 3),
        "objects": len(objects),
        "links": len(links),
        "graph_nodes": graph.number_of_nodes(),
        "graph_edges": graph.number_of_edges(),
    }


def run(
    objects: int = OBJECTS, links: int = LINKS, queries: int = QUERIES, seed: int = SEED
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ontology-") as tmp:
        folder, ours_db, limit_db = (Path(tmp) / name for name in ("ontology", "o.db", "l.db"))
        folder.mkdir()
        started = time.perf_counter()
        n = write_ontology(folder, objects, links)
        generate_seconds = time.perf_counter() - started
        a = _in_fresh_process("ours", folder=str(folder), database=str(ours_db))
        shutil.copyfile(ours_db, limit_db)
        b = _in_fresh_process("limit", database=str(limit_db))
        q = _in_fresh_process(
            "two_hop", folder=str(folder), database=str(ours_db), queries=queries, seed=seed
        )
    expected = {
        "objects_per_type": {t: n[t] for t in ("node", "service", "pod")},
        "links_per_type": {
            "runs_on": n["pod"],
            "instance_of": n["pod"],
            "calls": n["calls"],
            "connects_to": n["flows"],
        },
    }
    for what, want in expected.items():
        if a[what] != want:
            raise RuntimeError(f"ours built {what} {a[what]}, expected {want}")
    # Every object is a graph node and no two objects share two link types: edges are links.
    counts = {
        "objects": {
            "ours": sum(a["objects_per_type"].values()),
            "ours_graph": a["graph_nodes"],
            "limit": b["objects"],
            "limit_graph": b["graph_nodes"],
        },
        "links": {
            "ours": sum(a["links_per_type"].values()),
            "ours_graph": a["graph_edges"],
            "limit": b["links"],
            "limit_graph": b["graph_edges"],
        },
    }
    for what, want in (("objects", objects), ("links", links)):
        if set(counts[what].values()) != {want}:
            raise RuntimeError(f"{what} built: {counts[what]}, expected {want} each")
    s = a["seconds"]
    build = s["objects"] + s["links"] + s["graph_load"] + s["analytics"]
    return {
        "name": "ontology",
        "objects": objects,
        "links": links,
        "objects_per_type": a["objects_per_type"],
        "links_per_type": a["links_per_type"],
        "counts": counts,
        "generate_seconds": round(generate_seconds, 3),
        "ours_seconds": round(build, 3),
        "ours_phase_seconds": s,
        "ours_baseline_mib": a["baseline_mib"],
        "ours_peak_mib": a["peak_mib"],
        "ours_peak_after_mib": a["peak_after_mib"],
        "ours_cardinality_violations": a["cardinality_violations"],
        "limit_seconds": b["seconds"],
        "limit_baseline_mib": b["baseline_mib"],
        "limit_peak_mib": b["peak_mib"],
        "two_hop": q,
        "ratio_build_time_vs_limit": round(build / b["seconds"], 2),
        "ratio_build_time_without_analytics_vs_limit": round(
            (build - s["analytics"]) / b["seconds"], 2
        ),
        "ratio_peak_memory_vs_limit": round(a["peak_mib"] / b["peak_mib"], 2),
        "ratio_peak_memory_without_analytics_vs_limit": round(
            a["peak_after_mib"]["graph_load"] / b["peak_mib"], 2
        ),
        "ratio_two_hop_p95_vs_target_5ms": round(q["p95_ms"] / 5, 2),
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
