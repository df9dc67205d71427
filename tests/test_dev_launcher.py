"""`dagster-platform dev`, what `make run` starts: broker, Dagster UI, the sample data flowing."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.broker import EmbeddedBroker
from tests.conftest import free_port


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["data"]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # not up yet, or the warehouse is being written
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def warehouse_tables(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return {row[0] for row in conn.execute("SHOW TABLES").fetchall()}


@pytest.mark.slow
def test_dev_serves_the_ingestion_group_and_loads_the_sample_data(
    tmp_path: Path, data_dir: Path
) -> None:
    ui_port, broker_port = free_port(), free_port()
    state = tmp_path / "state"
    env = {
        **os.environ,
        "DAGSTER_PLATFORM_STATE": str(state),
        "DAGSTER_PLATFORM_DATA": str(data_dir),
        "DAGSTER_PLATFORM_BROKER_PORT": str(broker_port),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("DAGSTER_HOME", None)
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_platform.cli", "dev", "--port", str(ui_port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    broker = EmbeddedBroker(broker_port, state / "broker")
    try:
        wait_for(broker.reachable, 60, "the embedded broker")
        nodes = wait_for(
            lambda: graphql(ui_port, "{ assetNodes { assetKey { path } groupName } }")[
                "assetNodes"
            ],
            180,
            "the Dagster UI",
        )
        groups = {node["assetKey"]["path"][-1]: node["groupName"] for node in nodes}
        assert groups == {spec.name: "ingestion" for spec in SOURCES}
        expected = {spec.name for spec in SOURCES}
        wait_for(
            lambda: expected <= warehouse_tables(state / "warehouse.duckdb"),
            300,
            "the sensor to load every sample source",
        )
        assert (state / "dagster_home" / "dagster.yaml").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(90)
        log.close()
    assert not broker.reachable(timeout=1.0), "the broker outlived dagster-platform dev"
    assert not broker.pid_file.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=2)
