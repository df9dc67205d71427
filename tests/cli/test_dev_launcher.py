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
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.llm.service import resolve_backend
from dagster_platform.llm.vllm_local import LocalVLLMServer
from dagster_platform.settings import Settings
from tests.support.tiny_models import PREPARED_LLM
from tests.support.vllm import SHARED_ENVIRONMENT


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


def non_empty(path: Path, tables: set[str]) -> bool:
    with duckdb.connect(str(path), read_only=True) as conn:
        return all(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)


@pytest.mark.slow
@pytest.mark.models
@pytest.mark.kafka
@pytest.mark.vllm
def test_dev_serves_the_platform_and_the_data_flows_with_no_human_action(
    tmp_path: Path, data_dir: Path
) -> None:
    ui_port, broker_port, vllm_port, api_port = free_port(), free_port(), free_port(), free_port()
    state = tmp_path / "state"
    env = {
        **os.environ,
        "DAGSTER_PLATFORM_STATE": str(state),
        "DAGSTER_PLATFORM_DATA": str(data_dir),
        "DAGSTER_PLATFORM_BROKER_PORT": str(broker_port),
        # the vLLM server it starts: the environment and model `make test` prepared
        "DAGSTER_PLATFORM_VLLM_ENV": str(SHARED_ENVIRONMENT.root),
        "DAGSTER_PLATFORM_VLLM_PORT": str(vllm_port),
        "BASE_MODEL": str(PREPARED_LLM),
    }
    for name in ("LLM_BACKEND", "VLLM_BASE_URL"):
        env.pop(name, None)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("DAGSTER_HOME", None)
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_platform.cli",
            "dev",
            "--port",
            str(ui_port),
            "--produce-rate",
            "2",
            "--incident-every",
            "20",
            "--api-port",
            str(api_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    broker = EmbeddedBroker(broker_port, state / "broker")
    vllm = LocalVLLMServer(SHARED_ENVIRONMENT, state / "vllm", PREPARED_LLM, vllm_port)
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
        assert {spec.name for spec in SOURCES} <= set(groups)
        assert set(groups.values()) == {"ingestion", "ontology", "knowledge", "agents", "finetune"}
        expected = {spec.name for spec in SOURCES}
        warehouse = state / "warehouse.duckdb"
        wait_for(
            lambda: expected <= warehouse_tables(warehouse),
            300,
            "the sensor to load every sample source",
        )
        # the simulator's events land, the alert of the CPU incident with them, and the
        # rollups follow on their own
        streamed = {
            "host_metrics",
            "spark_job_events",
            "alert_events",
            "cluster_utilization_1m",
            "host_utilization_1h",
            "spark_job_state",
        }
        wait_for(lambda: non_empty(warehouse, streamed), 300, "events and rollups to flow")
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            rules = {r[0] for r in conn.execute("SELECT rule FROM alert_events").fetchall()}
        assert "cluster_cpu_high" in rules
        # the ontology sensor versions the YAML, and objects, links and graph follow on their own
        built = {
            "ontology_versions",
            "ontology_objects",
            "ontology_links",
            "ontology_graph_metrics",
        }
        wait_for(lambda: non_empty(warehouse, built), 180, "the ontology to build")
        # and the knowledge base chunks runbooks, incidents and the new objects on its own
        wait_for(
            lambda: non_empty(warehouse, {"document_chunks"}), 180, "the knowledge base to chunk"
        )
        assert (state / "dagster_home" / "dagster.yaml").is_file()
        # the ops console is served beside the API
        console = wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ui", timeout=5),
            120,
            "the ops console",
        )
        assert console.status == 200
        # the serving engine came up beside them, and the platform answers through it
        wait_for(vllm.healthy, 300, "the vLLM server")
        assert vllm.status()["model"] == PREPARED_LLM.name
        live = Settings(state_dir=state, base_model=str(PREPARED_LLM), vllm_port=vllm_port)
        resolved = resolve_backend(live)
        assert resolved[:2] == ("vllm-server", vllm.base_url)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(90)
        log.close()
    assert not broker.reachable(timeout=1.0), "the broker outlived dagster-platform dev"
    assert not vllm.healthy() and vllm.process.running_pid() is None, "vLLM outlived dev"
    assert not broker.pid_file.exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=2)
