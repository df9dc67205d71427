"""The frozen evaluation state (sample, ontology, chunks; reused as built), and `bench llm` on a
small run."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from benchmarks import llm as llm_benchmark
from dagster_platform.agents.frozen import (
    MARKER,
    PRISTINE,
    FrozenStateError,
    build_frozen_state,
)
from dagster_platform.ingestion.sources import SOURCES
from tests.support.state import SAMPLE_DIR, live_settings
from tests.support.tiny_models import PREPARED_LLM, build_tiny_llm


def _count(path: Path, sql: str) -> int:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql).fetchall()[0][0]


@pytest.mark.models
def test_a_frozen_state_holds_the_sample_and_is_reused_as_built(
    state_dir: Path, tmp_path: Path
) -> None:
    live = live_settings(state_dir)
    frozen = build_frozen_state(live, tmp_path / "frozen", embed=False)

    assert frozen.state_dir == (tmp_path / "frozen").resolve()
    assert frozen.warehouse_path.is_file() and not live.warehouse_path.exists()
    assert (frozen.state_dir / "models").resolve() == PREPARED_LLM.parent.resolve()
    assert frozen.chroma_host is None and frozen.yarn_resource_manager_url is None
    warehouse = frozen.warehouse_path
    for spec in SOURCES:
        assert _count(warehouse, f"SELECT count(*) FROM {spec.name}") > 0, spec.name
    assert _count(warehouse, "SELECT count(*) FROM cluster_utilization_1m") == 0
    types = _count(warehouse, "SELECT count(DISTINCT object_type) FROM ontology_objects")
    assert types >= 5
    assert _count(warehouse, "SELECT count(*) FROM ontology_links") > 0
    sources = _count(warehouse, "SELECT count(DISTINCT source) FROM document_chunks")
    assert sources >= 3  # runbooks, incidents and ontology descriptions

    # what a run writes (interactions, kill proposals) is gone when the state is asked again
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("CREATE TABLE written_by_a_run AS SELECT 1 AS x")
    built = (tmp_path / "frozen" / PRISTINE).stat().st_mtime_ns
    marker = (tmp_path / "frozen" / MARKER).read_text()
    again = build_frozen_state(live, tmp_path / "frozen", embed=False)
    assert again == frozen
    assert (tmp_path / "frozen" / PRISTINE).stat().st_mtime_ns == built  # not rebuilt
    assert (tmp_path / "frozen" / MARKER).read_text() == marker
    assert _count(warehouse, "SELECT count(*) FROM duckdb_tables() WHERE table_name = "
                  "'written_by_a_run'") == 0  # fmt: skip
    with pytest.raises(FrozenStateError, match="live state"):
        build_frozen_state(live, live.state_dir, embed=False)


@pytest.mark.models
def test_a_changed_sample_builds_again(state_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(SAMPLE_DIR, data)
    live = live_settings(state_dir).model_copy(update={"data_dir": data})
    target = tmp_path / "frozen"
    build_frozen_state(live, target, embed=False)
    renamed = "SELECT count(*) FROM clusters WHERE name = 'ETL Prod (renamed)'"
    assert _count(target / "warehouse.duckdb", renamed) == 0
    clusters = data / "clusters.csv"
    clusters.write_text(
        clusters.read_text(encoding="utf-8").replace("ETL Production", "ETL Prod (renamed)"),
        encoding="utf-8",
    )
    build_frozen_state(live, target, embed=False)
    assert _count(target / "warehouse.duckdb", renamed) == 1


@pytest.mark.slow
@pytest.mark.models
def test_the_llm_benchmark_measures_every_figure_on_a_small_run(
    state_dir: Path, tmp_path: Path
) -> None:
    """Every figure of `bench llm`, on a tiny random LLM so that the run takes seconds (the
    full run: the packaged SmolLM2, 3 rounds of 64 tokens, every routing question, 20 questions
    end to end)."""
    tiny = build_tiny_llm(tmp_path / "tiny-llm")
    settings = live_settings(state_dir).model_copy(update={"base_model": str(tiny)})
    figures = llm_benchmark.run(
        rounds=2,
        new_tokens=8,
        latency_questions=3,
        routing_questions=6,
        embed=False,
        settings=settings,
    )
    assert figures["name"] == "llm" and figures["machine"]["cpu_count"]
    assert figures["same_output_ours_vs_bare"] is True  # greedy: the same tokens both ways
    for key in (
        "tokens_per_s_ours",
        "tokens_per_s_bare",
        "ratio_tokens_per_s_ours_vs_bare",
        "latency_p50_ms",
        "latency_p50_ms_no_llm",
        "ratio_latency_p50_llm_vs_no_llm",
    ):
        assert figures[key] > 0, key
    for key in (
        "routing_accuracy",
        "routing_accuracy_llm_only",
        "routing_accuracy_classifier_only",
    ):
        assert 0 <= figures[key] <= 1, key
    assert figures["routing_questions"] == 6 and figures["routing_seed_questions"] == 5
    assert 0 <= figures["routing_seed_correct"] <= 5
    assert sum(figures["routing_share_by_source"].values()) == pytest.approx(1, abs=0.01)
    assert figures["ratio_routing_router_vs_llm_only"] is None or (
        figures["ratio_routing_router_vs_llm_only"] > 0
    )
    assert figures["questions"] == 3 and figures["model"] == "tiny-llm"
    assert figures["latency_p95_ms"] >= figures["latency_p50_ms"]
    assert figures["latency_p95_ms_no_llm"] >= figures["latency_p50_ms_no_llm"]
