"""The ontology benchmark on a small ontology: every path builds what it claims, and the JSON
has the figures and ratios the project rule asks for (the full run uses 1,000,000 objects)."""

import json

import pytest
from typer.testing import CliRunner

from benchmarks.ontology import run, sizes
from dagster_platform.cli import app


def test_ontology_benchmark_is_listed() -> None:
    result = CliRunner().invoke(app, ["bench", "kafka-nothing"])
    assert result.exit_code == 1
    assert "ontology" in result.output.split("available: ")[1].strip().split(", ")


def test_too_few_links_for_the_objects_is_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        sizes(10_000, 10_000)


def test_small_run_builds_every_object_and_link_on_every_path() -> None:
    result = json.loads(json.dumps(run(objects=20_000, links=60_000, queries=200)))

    assert result["name"] == "ontology"
    assert result["objects_per_type"] == {"node": 400, "service": 1_600, "pod": 18_000}
    assert result["links_per_type"] == {
        "runs_on": 18_000,
        "instance_of": 18_000,
        "calls": 4_800,
        "connects_to": 19_200,
    }
    assert set(result["counts"]["objects"].values()) == {20_000}
    assert set(result["counts"]["links"].values()) == {60_000}
    assert result["ours_cardinality_violations"] == {}
    assert set(result["ours_phase_seconds"]) == {
        "objects",
        "links",
        "graph_load",
        "analytics",
        "picture",
    }
    assert 0 < result["ours_baseline_mib"] < result["ours_peak_mib"]
    assert 0 < result["limit_baseline_mib"] < result["limit_peak_mib"]
    two_hop = result["two_hop"]
    assert two_hop["queries"] == 200
    assert 0 < two_hop["p50_ms"] <= two_hop["p95_ms"] <= two_hop["max_ms"]
    assert two_hop["neighbours_mean"] > 0
    ratios = {key for key in result if key.startswith("ratio_")}
    assert ratios == {
        "ratio_build_time_vs_limit",
        "ratio_build_time_without_analytics_vs_limit",
        "ratio_peak_memory_vs_limit",
        "ratio_peak_memory_without_analytics_vs_limit",
        "ratio_two_hop_p95_vs_target_5ms",
    }
    assert all(result[key] > 0 for key in ratios)
    assert result["machine"]["cpu_count"]
