"""The agents group materializes: the benchmark on a frozen sample and a report per alert."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.agents import ALERT_PARTITIONS, agent_benchmark, incident_reports
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.settings import REPO_ROOT, Settings
from resources import LLMResource
from tests.support.state import live_settings, platform_resources
from tests.support.tiny_models import build_tiny_llm

MINILM = REPO_ROOT / ".state" / "models" / "all-MiniLM-L6-v2"


@pytest.mark.slow
@pytest.mark.models
def test_agent_benchmark_scores_the_golden_questions(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDDING_MODEL", str(MINILM))
    tiny = build_tiny_llm(tmp_path / "tiny")
    result = dg.materialize(
        [agent_benchmark], resources=platform_resources(llm=LLMResource(base_model=str(tiny)))
    )
    assert result.success
    metadata = result.asset_materializations_for_node("agent_benchmark")[0].metadata
    assert metadata["questions"].value == 54
    assert metadata["routing_accuracy"].value >= 0.9
    assert metadata["routing_seed_correct"].value == 5
    assert metadata["grounding"].value > 0.5
    assert metadata["latency_p95_ms"].value >= metadata["latency_p50_ms"].value
    assert "| gq-001 |" in metadata["results"].value
    assert metadata["served"].value == "tiny (base model)"
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    live = Settings()
    assert not live.warehouse_path.exists()  # the benchmark never touched the live state


@pytest.mark.models
def test_an_incident_report_per_alert_partition(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = live_settings(state_dir)
    frozen = build_frozen_state(live, live.state_dir / "built", embed=False)
    monkeypatch.setenv("DAGSTER_PLATFORM_STATE", str(frozen.state_dir))
    with duckdb.connect(str(frozen.warehouse_path)) as conn:
        conn.execute(
            "INSERT INTO alert_events (kafka_topic, kafka_partition, kafka_offset, event_id, ts, "
            "alert_id, cluster_id, host_id, severity, rule, metric, value, threshold, message) "
            "VALUES ('ops-alerts', 0, 1, 'ev-1', '2026-11-20 09:30:00+00', 'al-1', 'etl-prod', "
            "NULL, 'sev1', 'cluster_cpu_high', 'cpu_pct', 93.4, 85, 'CPU above 85%')"
        )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ALERT_PARTITIONS.name, ["al-1"])
        result = dg.materialize(
            [incident_reports],
            instance=instance,
            partition_key="al-1",
            resources=platform_resources(),
        )
    assert result.success
    metadata = result.asset_materializations_for_node("incident_reports")[0].metadata
    assert metadata["report"].value.startswith("# Incident report: al-1")
    assert len(metadata["proposed_actions"].value) == 1
    assert (frozen.state_dir / "reports" / "incidents" / "al-1.md").is_file()
