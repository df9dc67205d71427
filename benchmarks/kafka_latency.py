"""Seconds from an event being produced to its row being queryable, with the daemon running.

Starts the local platform as `make run` does (`dagster-platform dev`, simulator off, a private
state folder and ports), then produces single host metric events one at a time, at random
moments, and polls the warehouse for each one's row.

What bounds it: the stream sensor's interval (DAGSTER_PLATFORM_STREAM_SENSOR_INTERVAL, default
5 s; the daemon evaluates sensors about every few seconds as well), the daemon's run queue
and launching a run process (a few seconds: the run imports the code location), then the
landing itself (well under a second for a few messages). A shorter interval trades more
Kafka metadata requests for lower latency.
"""

from __future__ import annotations

import json
import os
import random
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
from confluent_kafka import Producer

from benchmarks.common import machine
from dagster_platform.kafka.broker import free_port
from dagster_platform.kafka.events import HostMetricV1, encode
from dagster_platform.settings import get_settings

SAMPLES = 12


def _ui_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


def _row_present(database: Path, event_id: str) -> bool:
    try:
        with duckdb.connect(str(database), read_only=True) as conn:
            return bool(
                conn.execute(
                    "SELECT count(*) FROM host_metrics WHERE event_id = ?", [event_id]
                ).fetchone()[0]
            )
    except duckdb.Error:  # not created yet, or a run holds the write lock right now
        return False


def _wait(condition, timeout: float, poll: float = 0.1) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError
        time.sleep(poll)
    return time.monotonic() - started


def run() -> dict[str, Any]:
    ui_port, broker_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        state = Path(folder) / "state"
        env = {
            **os.environ,
            "DAGSTER_PLATFORM_STATE": str(state),
            "DAGSTER_PLATFORM_BROKER_PORT": str(broker_port),
        }
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.pop("DAGSTER_HOME", None)
        platform = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster_platform.cli",
                "dev",
                "--no-produce",
                "--port",
                str(ui_port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        latencies = []
        try:
            _wait(lambda: _ui_ready(ui_port), timeout=180, poll=1)
            producer = Producer(
                {"bootstrap.servers": f"127.0.0.1:{broker_port}", "log.connection.close": False}
            )
            database = state / "warehouse.duckdb"
            rng = random.Random(7)
            for i in range(SAMPLES + 1):
                time.sleep(rng.uniform(0, 5))  # land anywhere in the sensor's cycle
                event_id = f"latency-{uuid.uuid4().hex}"
                event = HostMetricV1(
                    event_id=event_id,
                    ts=datetime.now(UTC),
                    cluster_id="etl-prod",
                    host_id="etl-prod-worker-01",
                    cpu_pct=50.0,
                    memory_pct=50.0,
                    disk_pct=50.0,
                )
                producer.produce("raw-data-stream", value=encode(event))
                producer.flush(10)
                seconds = _wait(lambda eid=event_id: _row_present(database, eid), timeout=120)
                if i:  # the first one also waits for the first run ever; not counted
                    latencies.append(seconds)
        finally:
            platform.send_signal(signal.SIGTERM)
            platform.wait(120)
    quantiles = statistics.quantiles(latencies, n=20, method="inclusive")
    return {
        "name": "kafka-latency",
        "samples": len(latencies),
        "p50_seconds": round(statistics.median(latencies), 2),
        "p95_seconds": round(quantiles[18], 2),
        "max_seconds": round(max(latencies), 2),
        "sensor_interval_seconds": get_settings().stream_sensor_interval,
        "target_p50_seconds": 15,
        "ratio_p50_vs_target": round(statistics.median(latencies) / 15, 3),
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
