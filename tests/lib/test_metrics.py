"""Prometheus metrics added up over processes: landings recorded by separate processes, the API's
/metrics, a landing asset run, the lag gauge, and the standalone exporter — real processes,
files, broker and HTTP, no mocks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.parser import text_string_to_metric_families

from assets.streaming import landing_assets
from dagster_platform.api.app import create_app
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.landing import LandingReport
from dagster_platform.lib import metrics
from dagster_platform.settings import REPO_ROOT, Settings
from resources import KafkaResource, WarehouseResource
from tests.support.api import ALICE, KEYS, QUESTION, no_llm
from tests.support.events import produce, samples
from tests.support.state import live_settings, load_sample_warehouse

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# what Prometheus sends when it scrapes
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

RECORD = """
import sys
from dagster_platform.lib import metrics
from dagster_platform.kafka.landing import LandingReport

landings, lag = int(sys.argv[1]), int(sys.argv[2])
for _ in range(landings):
    report = LandingReport(
        "raw_events", "raw-data-stream", consumed=12,
        landed={"host_metrics": 8, "spark_job_events": 2},
        dead_lettered=2, reasons={"invalid_json": 1, "schema": 1}, remaining_lag=lag,
    )
    metrics.record_landing(report, 0.2)
metrics.record_answer("infra", 0.5)
"""


@pytest.fixture(autouse=True)
def fresh_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test records as a fresh process would, into its own state's folder."""
    metrics.reset()
    monkeypatch.delenv(metrics.ENV, raising=False)  # one set outside the tests comes back after
    yield
    metrics.reset()


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((f"dagster_platform_{name}", frozenset(labels.items())))


def scrape(directory: Path) -> Samples:
    return parse(metrics.exposition(directory).decode())


def report(lag: int = 0, landed: int = 5) -> LandingReport:
    return LandingReport(
        "raw_events",
        "raw-data-stream",
        consumed=landed + 1,
        landed={"host_metrics": landed},
        dead_lettered=1,
        reasons={"invalid_json": 1},
        remaining_lag=lag,
    )


def record_in_process(landings: int, lag: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RECORD, str(landings), str(lag)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output


# --- across processes -----------------------------------------------------------------------


def test_landings_of_separate_processes_add_up(state_dir: Path) -> None:
    first, second = record_in_process(5, lag=3), record_in_process(3, lag=3)
    for process in (first, second):
        finish(process)

    folder = Settings(state_dir=state_dir).metrics_dir
    seen = scrape(folder)
    family = {"family": "raw_events"}
    assert value(seen, "events_landed_total", **family, table="host_metrics") == 64
    assert value(seen, "events_landed_total", **family, table="spark_job_events") == 16
    assert value(seen, "events_dead_lettered_total", **family, reason="invalid_json") == 8
    assert value(seen, "events_dead_lettered_total", **family, reason="schema") == 8
    assert value(seen, "landing_duration_seconds_count", **family) == 8
    assert value(seen, "landing_duration_seconds_sum", **family) == pytest.approx(1.6)
    assert value(seen, "landing_duration_seconds_bucket", **family, le="0.25") == 8
    assert value(seen, "consumer_lag_messages", **family) == 3
    assert value(seen, "answer_latency_seconds_count", route="infra") == 2

    # a landing folds its files into the archive; the answers stay in per-process files,
    # named by host and pid
    host = metrics.process_identifier().rsplit("-", 1)[0]
    files = sorted(p.name for p in folder.glob("*.db"))
    assert files == sorted(
        [
            "counter_archive.db",
            "gauge_mostrecent_archive.db",
            "histogram_archive.db",
            f"histogram_{host}-{first.pid}.db",
            f"histogram_{host}-{second.pid}.db",
        ]
    )


def test_the_lag_gauge_keeps_the_most_recent_value(state_dir: Path) -> None:
    folder = Settings(state_dir=state_dir).metrics_dir
    for lag in (9, 4):  # one finished run after the other, each in its own process
        finish(record_in_process(1, lag=lag))
        assert value(scrape(folder), "consumer_lag_messages", family="raw_events") == lag

    metrics.record_landing(report(lag=0), 0.1)  # this process, later still: not the max, not a sum
    seen = scrape(folder)
    assert value(seen, "consumer_lag_messages", family="raw_events") == 0
    assert value(seen, "events_landed_total", family="raw_events", table="host_metrics") == 21


def test_a_metrics_failure_never_fails_the_caller(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "metrics"
    not_a_folder.write_text("a file where the folder should be")
    metrics.record_landing(report(), 0.1, directory=not_a_folder)
    metrics.record_request("/ask", "POST", 200, 0.1, directory=not_a_folder)
    metrics.record_answer("data", 0.1, directory=not_a_folder)
    assert not_a_folder.read_text() == "a file where the folder should be"


def test_labels_cannot_carry_free_text() -> None:
    assert metrics.label("infra") == "infra"
    assert metrics.label(None) == "none"
    assert metrics.label("where is my key alice-key-0123456789?") == "other"
    assert metrics.label("x" * 49) == "other"


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
def api_settings(tmp_path: Path, kafka_broker: EmbeddedBroker) -> Settings:
    live = live_settings(tmp_path / "state")
    load_sample_warehouse(live.warehouse_path)
    return live.model_copy(update={"kafka_bootstrap_servers": kafka_broker.bootstrap_servers})


@pytest.mark.models
def test_the_api_serves_its_metrics_without_a_key(api_settings: Settings) -> None:
    app = create_app(
        api_settings, assistant_factory=no_llm, api_keys=KEYS, rate_limit="1000/minute"
    )
    with TestClient(app) as client:
        assert client.get("/status", headers=ALICE).status_code == 200
        assert client.get("/status").status_code == 401
        assert client.post("/ask", json={"question": QUESTION}).status_code == 401
        asked = client.post("/ask", json={"question": QUESTION}, headers=ALICE)
        assert asked.status_code == 200, asked.text
        rated = client.post(
            "/ask/feedback",
            json={"interaction_id": asked.json()["interaction_id"], "rating": "up"},
            headers=ALICE,
        )
        assert rated.status_code == 202, rated.text
        assert client.get("/no/such/route/ia-12345").status_code == 404
        scraped = client.get("/metrics")  # no key
        by_prometheus = client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})

    assert scraped.status_code == 200 and by_prometheus.status_code == 200
    assert scraped.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert by_prometheus.headers["content-type"].startswith(OPENMETRICS)
    assert by_prometheus.text.endswith("# EOF\n")
    seen = parse(scraped.text)
    requests = "api_requests_total"
    assert value(seen, requests, path="/status", method="GET", status="200") == 1
    assert value(seen, requests, path="/status", method="GET", status="401") == 1
    assert value(seen, requests, path="/ask", method="POST", status="401") == 1
    assert value(seen, requests, path="/ask", method="POST", status="200") == 1
    assert value(seen, requests, path="/ask/feedback", method="POST", status="202") == 1
    assert value(seen, requests, path="unmatched", method="GET", status="404") == 1
    assert value(seen, "api_request_duration_seconds_count", path="/ask", method="POST") == 2
    assert value(seen, "answer_latency_seconds_count", route=asked.json()["route"]) == 1
    assert value(seen, "feedback_received_total", rating="up") == 1
    assert not any(dict(labels).get("path") == "/metrics" for _, labels in seen)
    for secret in [*KEYS.values(), "alice", QUESTION, "ia-12345", asked.json()["interaction_id"]]:
        assert secret not in scraped.text


@pytest.mark.models
def test_metrics_are_not_rate_limited_and_refusals_are_counted(api_settings: Settings) -> None:
    app = create_app(api_settings, assistant_factory=no_llm, api_keys=KEYS, rate_limit="1/minute")
    with TestClient(app) as client:
        assert [client.get("/status", headers=ALICE).status_code for _ in range(2)] == [200, 429]
        scrapes = [client.get("/metrics") for _ in range(5)]
    assert [s.status_code for s in scrapes] == [200] * 5
    seen = parse(scrapes[-1].text)
    assert value(seen, "api_requests_total", path="/status", method="GET", status="429") == 1
    # the API folded its files into the archive when it shut down; nothing was lost
    assert sorted(p.name for p in api_settings.metrics_dir.glob("*.db")) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]
    after = scrape(api_settings.metrics_dir)
    assert value(after, "api_requests_total", path="/status", method="GET", status="429") == 1


# --- a landing asset --------------------------------------------------------------------------


def test_a_landing_run_counts_landed_and_dead_lettered_events(
    state_dir: Path, private_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    (land_raw_events,) = [a for a in landing_assets if a.node_def.name == "land_raw_events"]
    resources = {
        "warehouse": WarehouseResource(database=str(tmp_path / "warehouse.duckdb")),
        "kafka": KafkaResource(
            bootstrap_servers=private_broker.bootstrap_servers, timeout_seconds=4
        ),
    }
    folder = Settings(state_dir=state_dir).metrics_dir
    family = {"family": "raw_events"}

    produce(private_broker, "raw-data-stream", [*samples(2), b"{oops"])
    assert dg.materialize([land_raw_events], resources=resources).success
    seen = scrape(folder)
    assert value(seen, "events_landed_total", **family, table="host_metrics") == 8
    assert value(seen, "events_dead_lettered_total", **family, reason="invalid_json") == 1
    assert value(seen, "consumer_lag_messages", **family) == 0
    assert value(seen, "landing_duration_seconds_count", **family) == 1

    produce(private_broker, "raw-data-stream", samples(1))
    assert dg.materialize([land_raw_events], resources=resources).success
    seen = scrape(folder)
    assert value(seen, "events_landed_total", **family, table="host_metrics") == 12
    assert value(seen, "events_dead_lettered_total", **family, reason="invalid_json") == 1
    assert value(seen, "landing_duration_seconds_count", **family) == 2


# --- the exporter ---------------------------------------------------------------------------


def test_the_exporter_serves_the_folder_over_http(state_dir: Path) -> None:
    metrics.record_landing(report(lag=2, landed=7), 0.1)
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "dagster_platform.cli", "metrics", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "DAGSTER_PLATFORM_STATE": str(state_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as got:
                    body, content_type = got.read().decode(), got.headers["Content-Type"]
                break
            except OSError:
                assert exporter.poll() is None, exporter.communicate()[0]
                assert time.monotonic() < deadline, "the exporter did not answer"
                time.sleep(0.2)
    finally:
        exporter.terminate()
        output, _ = exporter.communicate(timeout=30)
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    seen = parse(body)
    assert value(seen, "events_landed_total", family="raw_events", table="host_metrics") == 7
    assert value(seen, "consumer_lag_messages", family="raw_events") == 2
    assert f"serving the metrics of {state_dir / 'metrics'} on http://127.0.0.1:{port}" in output
