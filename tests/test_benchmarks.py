"""The benchmark command: names resolve, unknown ones are a clear error, output is JSON."""

from typer.testing import CliRunner

from benchmarks.common import fresh_topic, metric_payloads, produce_all
from benchmarks.kafka_ingest import consume_only, landing
from dagster_platform.cli import app
from dagster_platform.kafka.broker import EmbeddedBroker


def test_unknown_benchmark_lists_the_known_ones() -> None:
    result = CliRunner().invoke(app, ["bench", "kafka-nothing"])
    assert result.exit_code == 1
    assert "available: kafka-ingest, kafka-latency, ontology" in result.output


def test_ingest_benchmark_paths_agree_on_a_small_topic(
    kafka_broker: EmbeddedBroker, tmp_path
) -> None:
    """The measured paths really move every event (the full run uses 200,000)."""
    topic = fresh_topic(kafka_broker.bootstrap_servers)
    produce_all(kafka_broker.bootstrap_servers, topic, metric_payloads(3_000))
    assert consume_only(kafka_broker.bootstrap_servers, topic, 3_000, "test-consume") > 0
    seconds, landed = landing(kafka_broker.bootstrap_servers, topic, tmp_path / "w.duckdb")
    assert landed == 3_000 and seconds > 0
