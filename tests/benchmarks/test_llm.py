"""The frozen evaluation state (sample, ontology, chunks; reused as built), `bench llm` on a
small run, and its serving section: the arithmetic, the fields, and one short pass against the
session's real vLLM server."""

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
from dagster_platform.llm.vllm_local import LocalVLLMServer
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
        serving=False,
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


# --- serving ---------------------------------------------------------------------------------

EXPOSITION = """\
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="SmolLM2-135M-Instruct"} 120.0
vllm:generation_tokens_total{engine="1",model_name="a {b} c"} 5.0
vllm:generation_tokens_created{engine="0",model_name="SmolLM2-135M-Instruct"} 1.7e9
vllm:generation_tokens_total_other 99.0
vllm:prompt_tokens_total{engine="0"} 300.0
"""


def test_the_serving_counters_are_distinct_counters() -> None:
    totals = {n: llm_benchmark.counter_total(EXPOSITION, n) for n in llm_benchmark.VLLM_COUNTERS}
    assert totals[llm_benchmark.PROMPT_COUNTER] == 300.0
    assert totals[llm_benchmark.REQUEST_SECONDS] == 0.0  # not in this exposition


def test_tokens_per_second_and_the_idle_share_of_a_core() -> None:
    assert llm_benchmark.tokens_per_s(64, 2.0) == 32.0
    assert llm_benchmark.tokens_per_s(0, 0.0) == 0.0
    before = {1: 10.0, 2: 5.0, 3: 7.0}  # 3 ends in between: left out
    after = {1: 10.5, 2: 5.5, 4: 0.2}  # 4 appears in between: counted from zero
    assert llm_benchmark.cpu_spent(before, after) == pytest.approx(1.2)
    assert llm_benchmark.cpu_share(before, after, 20.0) == pytest.approx(1.2 / 20)
    assert llm_benchmark.cpu_spent({1: 3.0}, {1: 2.0}) == 0.0  # a reused pid never counts back


def test_a_counter_adds_up_its_labels_and_nothing_else() -> None:
    total = llm_benchmark.counter_total(EXPOSITION, llm_benchmark.GENERATION_COUNTER)
    assert total == 125.0
    assert llm_benchmark.counter_total(EXPOSITION, "vllm:missing_total") == 0.0


def test_the_single_stream_figures_compare_medians() -> None:
    rates = {"vllm": [30.0, 40.0, 35.0], "bare_openai": [35.0, 36.0, 34.0], "transformers": [20.0]}
    tokens = {"vllm": 64, "bare_openai": 64, "transformers": 60}
    texts = {"vllm": ["a"], "bare_openai": ["a"], "transformers": ["b"]}
    figures = llm_benchmark.stream_figures(rates, tokens, texts)
    assert figures["serving_tokens_per_s_vllm"] == 35.0
    assert figures["serving_tokens_per_s_bare_openai_rounds"] == [35.0, 36.0, 34.0]
    assert figures["serving_tokens_per_round_transformers"] == 60
    assert figures["ratio_vllm_vs_transformers_tokens_per_s"] == 1.75
    assert figures["ratio_vllm_ours_vs_bare_openai"] == pytest.approx(35 / 35)
    assert figures["serving_same_output_vllm_vs_bare_openai"] is True


def test_the_api_figures_scale_the_highest_level_against_the_lowest() -> None:
    levels = [
        llm_benchmark.Level(1, 80, 8.0, (2.0, 2.0, 2.0, 2.0), 0, 6.0, 4.0, 8.0, 1200.0),
        llm_benchmark.Level(8, 80, 2.0, (1.0, 2.0, 1.0, 2.0), 1, 5.0, 2.0, 2.0, 1200.0),
    ]
    figures = llm_benchmark.api_figures(levels)
    assert figures["api_tokens_per_s_by_concurrency"] == {"1": 10.0, "8": 40.0}
    assert figures["api_answers_per_s_by_concurrency"] == {"1": 0.5, "8": 2.0}
    assert figures["api_answer_p50_ms_by_concurrency"] == {"1": 2000, "8": 1500}
    assert figures["api_generated_tokens_per_answer"] == 20.0
    assert figures["api_prompt_tokens_per_answer"] == 300.0
    assert figures["api_vllm_share_of_answer_time_at_1"] == 0.75  # 6 s of the 8 answered
    assert figures["api_cpu_s_per_answer_by_concurrency"] == {
        "1": {"api": 1.0, "vllm": 2.0},
        "8": {"api": 0.5, "vllm": 0.5},
    }
    assert figures["api_cpu_cores_busy_by_concurrency"] == {"1": 1.5, "8": 2.0}
    assert figures["api_questions_per_level"] == 4 and figures["api_degraded"] == 1
    assert figures["ratio_tokens_per_s_8_vs_1"] == 4.0


def test_without_the_vllm_environment_the_benchmark_says_how_to_get_it(
    state_dir: Path, tmp_path: Path
) -> None:
    settings = live_settings(state_dir).model_copy(update={"vllm_environment": tmp_path / "none"})
    with pytest.raises(SystemExit) as stopped:
        llm_benchmark.run(settings=settings)
    message = str(stopped.value.code)
    assert "dagster-platform vllm install" in message and str(tmp_path / "none") in message


@pytest.mark.slow
@pytest.mark.models
def test_the_serving_section_measures_one_short_prompt_on_the_real_server(
    vllm_server: LocalVLLMServer, tmp_path: Path
) -> None:
    """One prompt, eight tokens, each path: our client on vLLM, the bare OpenAI client in the
    vLLM environment, our transformers backend; then the counter and a one-second idle."""
    generated = llm_benchmark.generated_tokens(vllm_server)
    one_prompt = llm_benchmark.PROMPTS[:1]
    figures = llm_benchmark.single_stream(
        vllm_server, str(PREPARED_LLM), tmp_path, rounds=1, new_tokens=8, prompts=one_prompt
    )
    for path in ("vllm", "bare_openai", "transformers"):
        assert figures[f"serving_tokens_per_s_{path}"] > 0, path
        assert 0 < figures[f"serving_tokens_per_round_{path}"] <= 8, path
    assert figures["serving_same_output_vllm_vs_bare_openai"] is True  # greedy, the same body
    assert figures["ratio_vllm_vs_transformers_tokens_per_s"] > 0
    assert figures["ratio_vllm_ours_vs_bare_openai"] > 0
    # the server counted the round's answers (and the warm-ups') of both paths on it
    served = (
        figures["serving_tokens_per_round_vllm"] + figures["serving_tokens_per_round_bare_openai"]
    )
    assert llm_benchmark.generated_tokens(vllm_server) - generated >= served

    pid = vllm_server.process.running_pid()
    assert pid is not None
    idle = llm_benchmark.idle_cpu(pid, seconds=1.0, settle_s=0.0)
    assert idle["vllm_processes"] >= 1 and 0 <= idle["vllm_idle_cpu_share_of_a_core"] < 2
