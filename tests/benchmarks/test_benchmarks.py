"""The benchmark command: names resolve, unknown ones are a clear error, output is JSON."""

import pytest
from typer.testing import CliRunner

from benchmarks import knowledge as knowledge_benchmark
from benchmarks.common import fresh_topic, metric_payloads, produce_all
from benchmarks.kafka_ingest import consume_only, landing
from dagster_platform.cli import app
from dagster_platform.kafka.broker import EmbeddedBroker


def test_unknown_benchmark_lists_the_known_ones() -> None:
    result = CliRunner().invoke(app, ["bench", "kafka-nothing"])
    assert result.exit_code == 1
    known = "answers, finetune, kafka-ingest, kafka-latency, knowledge, llm, ontology, streaming"
    assert f"available: {known}" in result.output


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("nonsense=1", "KEY one of: configurations, minutes, probe_every, warmup_minutes"),
        ("minutes=soon", "--set minutes: 'soon' is not a float"),
        ("minutes", "takes --set KEY=VALUE"),
    ],
)
def test_a_benchmark_parameter_it_does_not_take_is_refused_before_it_runs(
    option: str, said: str
) -> None:
    result = CliRunner().invoke(app, ["bench", "streaming", "--set", option])
    assert result.exit_code == 1
    assert said in result.output


def test_ingest_benchmark_paths_agree_on_a_small_topic(
    kafka_broker: EmbeddedBroker, tmp_path
) -> None:
    """The measured paths really move every event (the full run uses 200,000)."""
    topic = fresh_topic(kafka_broker.bootstrap_servers)
    produce_all(kafka_broker.bootstrap_servers, topic, metric_payloads(3_000))
    assert consume_only(kafka_broker.bootstrap_servers, topic, 3_000, "test-consume") > 0
    seconds, landed = landing(kafka_broker.bootstrap_servers, topic, tmp_path / "w.duckdb")
    assert landed == 3_000 and seconds > 0


@pytest.mark.slow
@pytest.mark.models
def test_knowledge_benchmark_measures_every_figure_on_a_small_run(state_dir) -> None:
    """Every figure of `bench knowledge` is produced (the full run uses 1,000 texts to embed
    and 100,000 chunks in the store)."""
    figures = knowledge_benchmark.run(embed_texts=40, store_chunks=500, queries=5)
    assert figures["incremental_embedded"] == 1  # 1 % of 40, rounded up to one chunk
    for key in (
        "ratio_asset_vs_bare_encode",
        "ratio_incremental_vs_full",
        "ratio_hybrid_p95_vs_vector_p95",
        "ratio_hybrid_vs_vector_hit_at_5",
        "ratio_hybrid_vs_vector_mrr",
    ):
        assert figures[key] > 0, key
    assert figures["hybrid_hit_at_5"] >= figures["vector_hit_at_5"]
