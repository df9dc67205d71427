"""What `make run`'s stack costs with nobody using it: runs, latency, CPU, failures.

Starts the local platform as `make run` does (`dagster-platform dev`: the embedded broker, the
vLLM server, the simulator at its default rate, the API and `dagster dev`) on a fresh state
folder, once per configuration: the stream sensors landing batches themselves (`sensor`, the
default) at the default event rate and at 10x it, and requesting a landing run per backlog
(`run`, the design before it) at the default rate. During each window it:

- produces a probe host metric every `probe_every` seconds and polls the warehouse (short
  read-only connections, as a person's query would) until the probe's row is there: event →
  queryable;
- reads the CPU time of the whole process tree (broker, vLLM, simulator, API, webserver,
  daemon, code server and every run process, reaped ones included) after the warm-up and at
  the end: the share of the machine's cores it kept busy with nobody asking anything;
- counts the Dagster runs created (all kinds: landing, ontology, incident reports…), the
  failed runs and the failed sensor ticks.

Runs per hour are given over the whole window from a fresh state (the first builds included)
and over the steady part after the warm-up. What bounds each: see the README's row.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psutil
from confluent_kafka import Producer

from benchmarks.common import machine
from dagster_platform.kafka.broker import free_port
from dagster_platform.kafka.events import HostMetricV1, encode
from dagster_platform.settings import get_settings

DEFAULT_RATE = 0.5  # `make run`'s simulator ticks per second
CONFIGURATIONS = (("sensor", 1), ("sensor", 10), ("run", 1))
TARGETS = {"runs_per_hour": 60, "p50_seconds": 10, "p95_seconds": 20, "cpu_share": 0.12}


def run(
    minutes: float = 20.0,
    warmup_minutes: float = 4.0,
    probe_every: float = 20.0,
    configurations: str = ",".join(f"{mode}@{x}" for mode, x in CONFIGURATIONS),
) -> dict[str, Any]:
    """`configurations`: comma-separated MODE@RATE_MULTIPLE, e.g. `sensor@1,run@1`."""
    results = {}
    for item in configurations.split(","):
        mode, _, multiple = item.strip().partition("@")
        results[f"{mode}_x{multiple or 1}"] = _measure(
            mode, float(multiple or 1), minutes, warmup_minutes, probe_every
        )
    figures: dict[str, Any] = {"name": "streaming", "minutes": minutes, **results}
    sensor, fast, runs = (results.get(k) for k in ("sensor_x1", "sensor_x10", "run_x1"))
    if sensor:
        figures["ratio_runs_per_hour_vs_target"] = _ratio(
            sensor["runs_per_hour"], TARGETS["runs_per_hour"]
        )
        figures["ratio_p95_vs_target"] = _ratio(sensor["p95_seconds"], TARGETS["p95_seconds"])
        figures["ratio_cpu_vs_target"] = _ratio(sensor["cpu_share"], TARGETS["cpu_share"])
    if sensor and runs:
        figures["ratio_steady_runs_sensor_vs_run"] = _ratio(
            sensor["steady_runs_per_hour"], runs["steady_runs_per_hour"]
        )
        figures["ratio_cpu_sensor_vs_run"] = _ratio(sensor["cpu_share"], runs["cpu_share"])
        figures["ratio_p50_sensor_vs_run"] = _ratio(sensor["p50_seconds"], runs["p50_seconds"])
    if sensor and fast:
        figures["ratio_steady_runs_10x_vs_1x"] = _ratio(
            fast["steady_runs_per_hour"], max(sensor["steady_runs_per_hour"], 1)
        )
        figures["ratio_cpu_10x_vs_1x"] = _ratio(fast["cpu_share"], sensor["cpu_share"])
    figures["targets"] = TARGETS
    figures["machine"] = machine()
    return figures


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _measure(
    mode: str, multiple: float, minutes: float, warmup_minutes: float, probe_every: float
) -> dict[str, Any]:
    current = get_settings()
    ports = {name: free_port() for name in ("ui", "broker", "vllm", "api")}
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as folder:
        state = Path(folder) / "state"
        state.mkdir()
        (state / "models").symlink_to(current.models_dir.resolve())  # prepared, not copied
        env = {
            **os.environ,
            "DAGSTER_PLATFORM_STATE": str(state),
            "DAGSTER_PLATFORM_BROKER_PORT": str(ports["broker"]),
            "DAGSTER_PLATFORM_VLLM_PORT": str(ports["vllm"]),
            "DAGSTER_PLATFORM_VLLM_ENV": str(current.vllm_environment or current.vllm_dir / "venv"),
            "DAGSTER_PLATFORM_STREAM_LANDING": mode,
        }
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_HOME", "LLM_BACKEND", "VLLM_BASE_URL"):
            env.pop(name, None)
        log = (Path(folder) / "dev.log").open("w")
        platform = subprocess.Popen(
            [sys.executable, "-m", "dagster_platform.cli", "dev",
             "--port", str(ports["ui"]), "--api-port", str(ports["api"]),
             "--produce-rate", str(DEFAULT_RATE * multiple)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started = time.monotonic()
        try:
            _wait(lambda: _ui_ready(ports["ui"]), timeout=300, poll=1)
            probe = _Probe(f"127.0.0.1:{ports['broker']}", state / "warehouse.duckdb")
            latencies = []
            while time.monotonic() - started < warmup_minutes * 60:
                probe.once()  # warm-up probes are not counted: the first runs are building
                time.sleep(probe_every)
            steady_from = time.time()
            cpu_start = _tree_cpu_seconds(platform.pid, state)
            cpu_wall_start = time.monotonic()
            while time.monotonic() - started < minutes * 60:
                seconds = probe.once()
                if seconds is not None:
                    latencies.append(seconds)
                time.sleep(max(probe_every - (seconds or 0), 0))
            cpu_seconds = _tree_cpu_seconds(platform.pid, state) - cpu_start
            cpu_wall = time.monotonic() - cpu_wall_start
            window = time.monotonic() - started
            runs = _runs(state / "dagster_home", steady_from)
        finally:
            platform.send_signal(signal.SIGTERM)
            try:
                platform.wait(180)
            except subprocess.TimeoutExpired:
                platform.kill()
            log.close()
        events = _events_landed(state / "warehouse.duckdb")
    quantiles = statistics.quantiles(latencies, n=20, method="inclusive") if latencies else None
    return {
        "mode": mode,
        "events_per_second": round(events / window, 1),
        "runs": runs["total"],
        "runs_per_hour": round(runs["total"] * 3600 / window, 1),
        "steady_runs_per_hour": round(runs["steady"] * 3600 / max(cpu_wall, 1), 1),
        "runs_by_kind": runs["by_kind"],
        "failed_runs": runs["failed"],
        "failed_ticks": runs["failed_ticks"],
        "probes": len(latencies),
        "probes_missed": probe.missed,
        "p50_seconds": round(statistics.median(latencies), 2) if latencies else None,
        "p95_seconds": round(quantiles[18], 2) if quantiles else None,
        "max_seconds": round(max(latencies), 2) if latencies else None,
        "cpu_seconds": round(cpu_seconds, 1),
        "cpu_share": round(cpu_seconds / cpu_wall / (os.cpu_count() or 1), 4),
    }


class _Probe:
    """One host metric at a time, timed from produce to its row being readable."""

    def __init__(self, servers: str, database: Path, timeout: float = 90.0):
        # quiet: it outlives the stack it probed until the benchmark process ends
        self.producer = Producer({"bootstrap.servers": servers, "log_level": 0})
        self.database, self.timeout, self.missed = database, timeout, 0

    def once(self) -> float | None:
        event_id = f"probe-{uuid.uuid4().hex}"
        event = HostMetricV1(
            event_id=event_id,
            ts=datetime.now(UTC),
            cluster_id="bench-probe",
            host_id="bench-probe-01",
            cpu_pct=1.0,
            memory_pct=1.0,
            disk_pct=1.0,
        )
        produced = time.monotonic()
        self.producer.produce("raw-data-stream", value=encode(event))
        self.producer.flush(10)
        while time.monotonic() - produced < self.timeout:
            if _row_present(self.database, event_id):
                return time.monotonic() - produced
            time.sleep(0.5)
        self.missed += 1
        return None


def _row_present(database: Path, event_id: str) -> bool:
    try:
        with duckdb.connect(str(database), read_only=True) as conn:
            return bool(
                conn.execute(
                    "SELECT count(*) FROM host_metrics WHERE event_id = ?", [event_id]
                ).fetchone()[0]
            )
    except duckdb.Error:  # not created yet, or a writer holds the file right now
        return False


def _events_landed(database: Path) -> int:
    tables = ("host_metrics", "spark_job_events", "alert_events", "feedback_events")
    try:
        with duckdb.connect(str(database), read_only=True) as conn:
            present = {row[0] for row in conn.execute("SHOW TABLES").fetchall()}
            return sum(
                conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in tables
                if t in present
            )
    except duckdb.Error:
        return 0


def _tree_cpu_seconds(root: int, state: Path) -> float:
    """CPU seconds of `root`, its descendants and the managed processes of `state` (broker,
    vLLM), each with its reaped children's, so processes that came and went still count."""
    processes: dict[int, psutil.Process] = {}
    try:
        top = psutil.Process(root)
        processes[root] = top
        processes.update({p.pid: p for p in top.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for pid_file in state.rglob("*.pid"):
        try:
            p = psutil.Process(int(pid_file.read_text().strip()))
            processes[p.pid] = p
            processes.update({c.pid: c for c in p.children(recursive=True)})
        except (ValueError, OSError, psutil.Error):
            continue
    total = 0.0
    for p in processes.values():
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _runs(home: Path, steady_from: float) -> dict[str, Any]:
    import dagster as dg
    from dagster._core.scheduler.instigation import TickStatus

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
        by_kind: dict[str, int] = {}
        for record in records:
            kind = record.dagster_run.tags.get("dagster-platform/stream") or (
                record.dagster_run.job_name
            )
            by_kind[kind] = by_kind.get(kind, 0) + 1
        failed_ticks = sum(
            len(instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1000,
                                   statuses=[TickStatus.FAILURE]))
            for s in instance.all_instigator_state()
        )  # fmt: skip
        return {
            "total": len(records),
            "steady": sum(1 for r in records if r.create_timestamp.timestamp() >= steady_from),
            "by_kind": by_kind,
            "failed": sum(
                1 for r in records if r.dagster_run.status == dg.DagsterRunStatus.FAILURE
            ),
            "failed_ticks": failed_ticks,
        }


def _ui_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


def _wait(condition, timeout: float, poll: float = 0.5) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not ready after {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic() - started


if __name__ == "__main__":
    print(json.dumps(run()))
