"""The embedded broker, over real TCP."""

import os
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from dagster_platform.cli import app
from dagster_platform.kafka.broker import BrokerError, EmbeddedBroker, free_port
from dagster_platform.kafka.topics import (
    PLATFORM_TOPICS,
    KafkaUnavailable,
    TopicSpec,
    ensure_topics,
    list_topics,
)


def test_session_broker_has_the_platform_topics(kafka_broker: EmbeddedBroker) -> None:
    topics = list_topics(kafka_broker.bootstrap_servers)
    for spec in PLATFORM_TOPICS:
        assert topics[spec.name] == spec.partitions


def test_produce_and_consume_round_trip(kafka_broker: EmbeddedBroker) -> None:
    topic = f"round-trip-{os.getpid()}-{free_port()}"
    ensure_topics(kafka_broker.bootstrap_servers, (TopicSpec(topic, 1, "test"),))
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(topic, key=b"etl-prod", value=b'{"alert": "cpu"}')
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": "test-round-trip",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    message = consumer.poll(10)
    consumer.close()
    assert message is not None and message.error() is None
    assert message.value() == b'{"alert": "cpu"}'


@pytest.mark.kafka
def test_background_start_writes_a_pid_file_and_is_idempotent(tmp_path: Path) -> None:
    broker = EmbeddedBroker(free_port(), tmp_path)
    pid = broker.start()
    try:
        assert broker.pid_file.read_text().strip() == str(pid)
        assert broker.reachable()
        assert broker.start() == pid  # adopts the running one
    finally:
        assert broker.stop() is True
    assert not broker.pid_file.exists()
    assert not broker.reachable(timeout=1.0)
    assert broker.stop() is False


@pytest.mark.kafka
def test_a_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    broker = EmbeddedBroker(free_port(), tmp_path)
    broker.pid_file.write_text("999999\n")
    assert broker.running_pid() is None
    assert not broker.pid_file.exists()


@pytest.mark.kafka
def test_a_port_held_by_an_unmanaged_broker_is_refused(
    kafka_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    other = EmbeddedBroker(kafka_broker.port, tmp_path)
    with pytest.raises(BrokerError, match="does not manage"):
        other.start()


def test_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(KafkaUnavailable, match=r"127\.0\.0\.1:\d+ did not answer"):
        list_topics(f"127.0.0.1:{free_port()}", timeout=1.0)


def test_cli_starts_and_stops_a_detached_broker(state_dir: Path, monkeypatch) -> None:
    port = free_port()
    monkeypatch.setenv("DAGSTER_PLATFORM_BROKER_PORT", str(port))
    runner = CliRunner()
    started = runner.invoke(app, ["broker", "start", "--detach"])
    try:
        assert started.exit_code == 0, started.output
        assert f"127.0.0.1:{port}" in started.output
        pid = int((state_dir / "broker" / "tansu.pid").read_text())
        os.kill(pid, 0)
    finally:
        stopped = runner.invoke(app, ["broker", "stop"])
    assert stopped.exit_code == 0
    assert "broker stopped" in stopped.output


def test_cli_refuses_the_embedded_broker_when_kafka_is_external(
    state_dir: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    result = CliRunner().invoke(app, ["broker", "start", "--detach"])
    assert result.exit_code == 1
    assert "KAFKA_BOOTSTRAP_SERVERS is set" in result.output


@pytest.mark.kafka
def test_foreground_broker_runs_until_interrupted(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    env = {**os.environ, "DAGSTER_PLATFORM_STATE": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_platform.cli", "broker", "start", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    broker = EmbeddedBroker(port, tmp_path / "broker")
    try:
        deadline = time.monotonic() + 30
        topics: dict[str, int] = {}
        while len(topics) < len(PLATFORM_TOPICS):  # ready, and the topics created
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline
            try:
                topics = list_topics(broker.bootstrap_servers, timeout=0.5)
            except KafkaUnavailable:
                time.sleep(0.1)
        assert topics["raw-data-stream"] == 3
        assert not broker.pid_file.exists()  # a foreground broker is not a managed one
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    assert not broker.reachable(timeout=0.5)


def test_the_cli_does_not_load_polars() -> None:
    """polars installs its own SIGINT handling when imported, which keeps a foreground broker
    from stopping on Ctrl-C; the console command must not pull it in at start-up."""
    import subprocess
    import sys

    code = "import sys, dagster_platform.cli; print('polars' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
