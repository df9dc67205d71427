"""Seed 004 end to end: with the simulator running a CPU spike on etl-prod, the five questions
in one session; an operator approves the proposed kills; the simulator stops the jobs; the last
answer reports the lower utilisation from freshly landed data."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from dagster_platform.agents.assistant import Assistant
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import RAW_EVENTS
from dagster_platform.kafka.landing import land_stream
from dagster_platform.kafka.publisher import run_producer
from dagster_platform.kafka.rollups import ROLLUPS, refresh
from dagster_platform.kafka.simulator import ClusterSimulator
from dagster_platform.ontology.actions import approve
from dagster_platform.ontology.loader import load_ontology
from dagster_platform.ontology.roles import load_roles
from dagster_platform.settings import Settings
from tests.support.scenario import SEED
from tests.support.state import ONTOLOGY_DIR, ROLES_FILE, SAMPLE_DIR, live_settings


def _land(settings: Settings, servers: str) -> None:
    @contextmanager
    def connect():
        with duckdb.connect(str(settings.warehouse_path)) as conn:
            yield conn

    land_stream(connect, servers, RAW_EVENTS, timeout=5)
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        for spec in ROLLUPS:
            refresh(conn, spec)


def _etl_cpu(answer) -> float:
    """etl-prod's workers' CPU of the latest landed minute, as the infra tool reported it."""
    rows = [
        r for result in answer.results for r in result.rows if r.get("cluster_id") == "etl-prod"
    ]
    return float(rows[0]["workers_cpu_pct"])


@pytest.mark.slow
@pytest.mark.models
@pytest.mark.kafka
def test_seed_scenario_with_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build_frozen_state(live_settings(tmp_path / "src"), tmp_path / "state", embed=False)
    broker = EmbeddedBroker(free_port(), tmp_path / "broker")
    broker.start()
    stop = threading.Event()
    try:
        servers = broker.bootstrap_servers
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
        simulator = ClusterSimulator(SAMPLE_DIR)
        producer = threading.Thread(
            target=run_producer,
            args=(servers, simulator),
            kwargs={"rate": 10, "incident": "cpu-spike", "cluster": "etl-prod", "stop": stop},
        )
        producer.start()
        time.sleep(3)  # a few simulated minutes of the spike
        _land(settings, servers)

        assistant = Assistant.open(settings, use_llm=False)
        try:
            first, second, guide, kill = (assistant.ask(q, "seed-e2e") for q in SEED[:4])
            assert [a.interaction.route for a in (first, second, guide, kill)] == [
                "infra",
                "data",
                "guide",
                "data",
            ]
            before = _etl_cpu(first)
            assert before > 85, first.text  # the spike is visible in the landed minutes
            top_two = second.interaction.subjects[:2]
            assert kill.interaction.tool_calls[0]["arguments"]["application_ids"] == top_two
            assert len(kill.interaction.proposed_actions) == 2

            with duckdb.connect(str(settings.warehouse_path)) as conn:
                loaded, roles = load_ontology(ONTOLOGY_DIR), load_roles(ROLES_FILE)
                for action_id in kill.interaction.proposed_actions:
                    status = approve(
                        conn, loaded, roles, action_id, "alice", bootstrap_servers=servers
                    )
                    assert status.status == "executed", status.detail
            time.sleep(3)  # the simulator applies the commands before its next ticks
            _land(settings, servers)
            after_answer = assistant.ask(SEED[4], "seed-e2e")
        finally:
            assistant.close()
        assert after_answer.interaction.route == "infra"
        after = _etl_cpu(after_answer)
        assert after < before - 10, after_answer.text
        assert "etl-prod" in after_answer.text
    finally:
        stop.set()
        broker.stop()
