"""The cluster simulator: its model offline, then publishing to and obeying the real broker."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from dagster_platform.cli import app
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import (
    ACTIONS_TOPIC,
    AlertV1,
    HostMetricV1,
    SparkJobEventV1,
    encode,
)
from dagster_platform.kafka.publisher import run_producer
from dagster_platform.kafka.simulator import ClusterSimulator, Outgoing
from dagster_platform.kafka.topics import KafkaUnavailable
from tests.support.scenario import kill_command
from tests.support.state import SAMPLE_DIR

TOP_TWO = ("application_1794712500000_0488", "application_1794712500000_0492")
TOPICS = ("raw-data-stream", "ops-alerts")


def _worker_cpu(out: list[Outgoing], cluster_id: str = "etl-prod") -> float:
    cpus = [
        o.event.cpu_pct
        for o in out
        if isinstance(o.event, HostMetricV1)
        and o.event.cluster_id == cluster_id
        and "-worker-" in o.event.host_id
    ]
    return sum(cpus) / len(cpus)


def _alerts(out: list[Outgoing], rule: str, cluster_id: str | None = None) -> list[AlertV1]:
    return [
        o.event
        for o in out
        if isinstance(o.event, AlertV1)
        and o.event.rule == rule
        and cluster_id in (None, o.event.cluster_id)
    ]


def _job_states(out: list[Outgoing], application_id: str) -> list[str]:
    return [
        o.event.state
        for o in out
        if isinstance(o.event, SparkJobEventV1) and o.event.application_id == application_id
    ]


def _run(simulator: ClusterSimulator, ticks: int) -> list[list[Outgoing]]:
    return [simulator.tick() for _ in range(ticks)]


def test_the_same_seed_gives_byte_identical_events() -> None:
    def stream(seed: int) -> list[tuple[str, bytes, bytes]]:
        simulator = ClusterSimulator(SAMPLE_DIR, seed=seed)
        out = _run(simulator, 5)
        simulator.inject_incident("cpu-spike")
        out += _run(simulator, 25)
        return [(o.topic, o.key, o.value) for tick in out for o in tick]

    first = stream(7)
    assert first == stream(7)
    assert first != stream(8)
    assert len({msgspec.json.decode(v)["event_id"] for _, _, v in first}) == len(first)


def test_the_first_tick_reproduces_the_snapshot_and_its_alarm() -> None:
    out = ClusterSimulator(SAMPLE_DIR).tick()
    samples = [o for o in out if isinstance(o.event, HostMetricV1)]
    assert len(samples) == 40 and all(o.key == o.event.host_id.encode() for o in samples)
    assert _worker_cpu(out) == pytest.approx(90.6, abs=2.0)
    assert _worker_cpu(out, "analytics-prod") < 60
    [alert] = _alerts(out, "cluster_cpu_high")
    assert (alert.cluster_id, alert.severity, alert.metric, alert.threshold) == (
        "etl-prod",
        "sev2",
        "cpu_pct",
        85.0,
    )
    assert all(job in alert.message for job in TOP_TWO)


def test_a_cpu_spike_raises_one_alert_until_the_cluster_recovers() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR)
    before = _worker_cpu(simulator.tick(), "analytics-prod")
    assert simulator.runaway_on("analytics-prod") is None
    runaway = simulator.inject_incident("cpu-spike", "analytics-prod")
    assert simulator.runaway_on("analytics-prod") == runaway  # submitted, not yet running
    assert simulator.runaway_on("etl-prod") is None
    spike = _run(simulator, 20)
    assert simulator.runaway_on("analytics-prod") == runaway
    assert _job_states(spike[0], runaway) == ["SUBMITTED", "RUNNING"]
    assert _worker_cpu(spike[-1], "analytics-prod") > max(85.0, before + 30)
    flat = [o for tick in spike for o in tick]
    [alert] = _alerts(flat, "cluster_cpu_high", "analytics-prod")
    assert alert.value > 85.0 and runaway in alert.message

    assert simulator.apply_action(kill_command(runaway, "analytics-prod"))
    recovered = _run(simulator, 3)
    assert _job_states(recovered[0], runaway) == ["KILLED"]
    assert simulator.runaway_on("analytics-prod") is None  # the next scheduled spike may come
    assert _worker_cpu(recovered[-1], "analytics-prod") < 80
    assert not _alerts([o for tick in recovered for o in tick], "cluster_cpu_high")

    simulator.inject_incident("cpu-spike", "analytics-prod")  # re-armed: it fires again
    again = [o for tick in _run(simulator, 20) for o in tick]
    assert len(_alerts(again, "cluster_cpu_high", "analytics-prod")) == 1


def test_killing_the_top_two_jobs_brings_etl_prod_down() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR)
    simulator.tick()
    assert all(simulator.apply_action(kill_command(job)) for job in TOP_TWO)
    assert not simulator.apply_action(kill_command(TOP_TWO[0]))  # already being killed
    assert not simulator.apply_action(kill_command("application_1794712500000_9999"))
    assert not simulator.apply_action(kill_command(TOP_TWO[0], "staging"))  # wrong cluster
    after = _run(simulator, 5)
    for job in TOP_TWO:
        assert _job_states(after[0], job) == ["KILLED"]
        assert all(not _job_states(tick, job) for tick in after[1:])
    assert all(_worker_cpu(tick) < 80 for tick in after)
    assert not simulator.apply_action(kill_command(TOP_TWO[1]))  # gone


def test_a_full_disk_raises_one_host_alert() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR)
    host = simulator.inject_incident("disk-full")
    out = [o for tick in _run(simulator, 10) for o in tick]
    [alert] = _alerts(out, "host_disk_full")
    assert alert.host_id == host and alert.value > 95.0


def test_an_unknown_incident_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="cpu-spike, disk-full"):
        ClusterSimulator(SAMPLE_DIR).inject_incident("meteor")
    with pytest.raises(ValueError, match="unknown cluster"):
        ClusterSimulator(SAMPLE_DIR).inject_incident("cpu-spike", "nowhere")


# --- against the real broker -----------------------------------------------------------------


def _consumer(bootstrap_servers: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "test-simulator",
            "enable.auto.commit": False,
        }
    )


def _ends(bootstrap_servers: str) -> dict[tuple[str, int], int]:
    """High watermark of every partition the simulator writes: a point at or before the end.

    The embedded broker reports the base offset of the last record batch + 1, not the end, so
    counts cannot be watermark deltas: a run is told apart by its simulated time instead.
    """
    consumer = _consumer(bootstrap_servers)
    try:
        return {
            (topic, partition): consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=5
            )[1]
            for topic in TOPICS
            for partition in consumer.list_topics(topic, timeout=5).topics[topic].partitions
        }
    finally:
        consumer.close()


def _read_run(
    bootstrap_servers: str,
    since: dict[tuple[str, int], int],
    stamp: str,
    done: Callable[[list[tuple[str, bytes]]], bool],
) -> list[tuple[str, bytes]]:
    """(topic, value) of the events whose simulated time starts with `stamp` (a day or a month:
    the first tick replays the snapshot jobs' starts, up to days before the run's start), read
    until `done` says so."""
    consumer = _consumer(bootstrap_servers)
    consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in since.items()])
    found: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + 20
    try:
        while not done(found) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            try:
                event = msgspec.json.decode(message.value())
            except msgspec.DecodeError:  # another test's bad message on the shared broker
                continue
            if isinstance(event, dict) and str(event.get("ts", "")).startswith(stamp):
                found.append((message.topic(), message.value()))
    finally:
        consumer.close()
    return found


def test_run_producer_publishes_exactly_what_it_reports(kafka_broker: EmbeddedBroker) -> None:
    servers = kafka_broker.bootstrap_servers
    start = datetime(2031, 1, 10, tzinfo=UTC)
    before = _ends(servers)
    report = run_producer(
        servers,
        ClusterSimulator(SAMPLE_DIR, seed=11, start=start),
        ticks=5,
        rate=0,
        incident="cpu-spike",
        incident_every=30,  # at rate 0: simulated seconds, so ticks 0 and 3
    )
    assert report.ticks == 5 and report.delivery_failures == 0
    assert report.events["host_metric.v1"] == 5 * 40
    # tick 3's spike waits: the first runaway still burns, and runaways never end by themselves
    assert [(i["tick"], i["kind"]) for i in report.incidents] == [(0, "cpu-spike")]
    assert report.incidents_deferred == 1
    total = sum(report.sent.values())
    reached: list[float] = []

    def settled(found: list[tuple[str, bytes]]) -> bool:
        """Everything reported has arrived, and nothing more for half a second."""
        if len(found) >= total and not reached:
            reached.append(time.monotonic())
        return len(found) > total or (bool(reached) and time.monotonic() - reached[0] > 0.5)

    found = _read_run(servers, before, "2031-01", settled)
    assert Counter(topic for topic, _ in found) == report.sent

    offline = ClusterSimulator(SAMPLE_DIR, seed=11, start=start)
    expected: list[bytes] = []
    for tick in range(5):
        if tick == 0:
            offline.inject_incident("cpu-spike")
        expected += [o.value for o in offline.tick()]
    assert sorted(value for _, value in found) == sorted(expected)
    assert json.loads(json.dumps(report.to_dict()))["sent"] == report.sent


def test_a_kill_command_on_ops_actions_is_applied(kafka_broker: EmbeddedBroker) -> None:
    servers = kafka_broker.bootstrap_servers
    simulator = ClusterSimulator(SAMPLE_DIR, start=datetime(2031, 3, 1, tzinfo=UTC))
    before = _ends(servers)
    stop = threading.Event()
    reports = []
    runner = threading.Thread(
        target=lambda: reports.append(run_producer(servers, simulator, rate=20, stop=stop))
    )
    runner.start()
    try:  # the actions consumer is in place before the first event goes out
        assert _read_run(servers, before, "2031-03-01", bool), "the simulator published nothing"
        producer = Producer({"bootstrap.servers": servers})
        producer.produce(ACTIONS_TOPIC, b"not a command")
        producer.produce(ACTIONS_TOPIC, encode(kill_command("application_1794712500000_9999")))
        producer.produce(ACTIONS_TOPIC, encode(kill_command(TOP_TWO[0])))
        assert producer.flush(10) == 0

        def killed(found: list[tuple[str, bytes]]) -> bool:
            return any(b'"state":"KILLED"' in v and TOP_TWO[0].encode() in v for _, v in found)

        assert killed(_read_run(servers, before, "2031-03-01", killed))
    finally:
        stop.set()
        runner.join(20)
    [report] = reports
    assert (report.actions_applied, report.actions_ignored, report.actions_invalid) == (1, 1, 1)
    assert report.delivery_failures == 0


def test_cli_produce_prints_a_json_report(
    kafka_broker: EmbeddedBroker, state_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    result = CliRunner().invoke(app, ["produce", "--ticks", "3", "--rate", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ticks"] == 3 and report["seed"] == 7
    assert report["events"]["host_metric.v1"] == 3 * 40
    assert report["sent"]["ops-alerts"] == 1  # etl-prod starts under its CPU alarm
    assert Counter(report["sent"]).total() == Counter(report["events"]).total()


def test_cli_produce_reports_bad_options_and_an_unreachable_broker(
    state_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    runner = CliRunner()
    unknown = runner.invoke(app, ["produce", "--ticks", "1", "--incident", "meteor"])
    assert unknown.exit_code == 1 and "known: cpu-spike, disk-full" in unknown.stderr
    down = runner.invoke(app, ["produce", "--ticks", "1"])
    assert down.exit_code == 1
    assert "did not answer" in down.stderr and not down.stdout.strip()
    with pytest.raises(KafkaUnavailable):
        run_producer(f"127.0.0.1:{free_port()}", ClusterSimulator(SAMPLE_DIR), connect_timeout=1)
