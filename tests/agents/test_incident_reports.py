"""Alerts become report partitions (a real broker), and each report is built from the
ontology, the rollups and the knowledge base of a frozen sample state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from confluent_kafka import Producer

from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.incident_report import AlertNotLanded, build_report, read_alert
from dagster_platform.agents.tools import ToolContext
from dagster_platform.kafka.alert_follower import AlertFollower
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import ALERT_EVENTS, AlertV1, encode
from dagster_platform.kafka.topics import PLATFORM_TOPICS, ensure_topics
from dagster_platform.settings import Settings
from resources import KafkaResource
from sensors.alert_sensors import REPORT_INPUTS, new_alerts
from tests.support.state import live_settings

KAFKA = {"kafka": KafkaResource()}  # the broker of KAFKA_BOOTSTRAP_SERVERS, as set per test


def _alert(alert_id: str, metric: str = "cpu_pct") -> AlertV1:
    return AlertV1(
        event_id=f"ev-{alert_id}",
        ts=datetime(2026, 11, 20, 9, 30, tzinfo=UTC),
        alert_id=alert_id,
        cluster_id="etl-prod",
        severity="sev1",
        rule="cluster_cpu_high",
        metric=metric,
        value=93.4,
        threshold=85.0,
        message="etl-prod CPU above 85% for 5 minutes",
    )


def _produce(bootstrap: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(ALERT_EVENTS.topic, value)
    producer.flush(10)


def _report_inputs_built(instance: dg.DagsterInstance) -> None:
    for key in REPORT_INPUTS:
        instance.report_runless_asset_event(dg.AssetMaterialization(key))


def test_the_follower_reads_each_alert_once(kafka_broker: EmbeddedBroker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    ensure_topics(bootstrap, PLATFORM_TOPICS)
    ids = [f"al-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    _produce(bootstrap, [encode(_alert(ids[0])), b"{not json", encode(_alert(ids[1]))])
    group = f"test-{uuid.uuid4().hex[:6]}"
    follower = AlertFollower(bootstrap, group=group)
    try:
        seen = [a.alert_id for a in follower.poll()]
        follower.commit()
        assert set(ids) <= set(seen)  # the junk message is skipped (landing dead-letters it)
        assert not {a.alert_id for a in follower.poll()} & set(ids)
    finally:
        follower.close()


def test_the_sensor_adds_a_partition_and_a_run_per_alert(
    kafka_broker: EmbeddedBroker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    ensure_topics(bootstrap, PLATFORM_TOPICS)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    alert_id = f"al-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, [encode(_alert(alert_id))])
    with dg.instance_for_test() as instance:
        # a fresh state: the alert waits in Kafka until the ontology and knowledge base exist
        early = new_alerts(dg.build_sensor_context(instance=instance, resources=KAFKA))
        assert isinstance(early, dg.SkipReason)
        assert "waiting for ontology_objects, ontology_links, document_chunks" in (
            early.skip_message or ""
        )
        _report_inputs_built(instance)
        result = new_alerts(dg.build_sensor_context(instance=instance, resources=KAFKA))
        assert isinstance(result, dg.SensorResult)
        keys = {r.partition_key for r in result.run_requests}
        assert alert_id in keys
        assert {r.run_key for r in result.run_requests} == {f"incident-report:{k}" for k in keys}
        (added,) = result.dynamic_partitions_requests
        assert alert_id in added.partition_keys
        again = new_alerts(dg.build_sensor_context(instance=instance, resources=KAFKA))
        assert isinstance(again, dg.SkipReason)


def test_the_sensor_skips_with_a_reason_when_the_broker_is_down(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    with dg.instance_for_test() as instance:
        _report_inputs_built(instance)
        result = new_alerts(dg.build_sensor_context(instance=instance, resources=KAFKA))
    assert isinstance(result, dg.SkipReason) and "broker unreachable" in result.skip_message


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("frozen-incidents")
    return build_frozen_state(live_settings(root / "live"), root / "frozen", embed=False)


@pytest.mark.models
def test_a_report_names_suspects_incidents_and_proposes_only(frozen: Settings) -> None:
    tools = ToolContext(frozen, actor="incident-reports", retriever_factory=None)
    with pytest.raises(AlertNotLanded, match="has not landed"):
        read_alert(tools, "al-missing")
    alert = _alert("al-report-1")
    with duckdb.connect(str(frozen.warehouse_path)) as conn:
        conn.execute(
            "INSERT INTO alert_events (kafka_topic, kafka_partition, kafka_offset, event_id, ts, "
            "alert_id, cluster_id, host_id, severity, rule, metric, value, threshold, message) "
            "VALUES ('ops-alerts', 0, 7, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
            [alert.event_id, alert.ts, alert.alert_id, alert.cluster_id, alert.severity,
             alert.rule, alert.metric, alert.value, alert.threshold, alert.message],
        )  # fmt: skip
    row = read_alert(tools, "al-report-1")
    report = build_report(tools, row)
    markdown = report.markdown
    assert markdown.startswith("# Incident report: al-report-1")
    for section in ("Cluster utilisation", "Suspects", "Similar past incidents", "Proposed"):
        assert section in markdown
    assert report.suspects and report.suspects[0]["object"].startswith("spark_job:")
    assert len(report.proposed_actions) == 1
    assert report.proposed_actions[0] in markdown
    with duckdb.connect(str(frozen.warehouse_path), read_only=True) as conn:
        steps = conn.execute("SELECT DISTINCT step FROM action_log").fetchall()
    assert steps == [("proposed",)]
    assert "knowledge base is not available" in markdown  # no retriever: said, not hidden

    memory = build_report(tools, {**row, "alert_id": "al-report-2", "metric": "memory_pct"})
    assert memory.proposed_actions == []  # only CPU alerts propose a kill
