"""The finetune group through Dagster on a tiny model: rated answers become a dataset, the
dataset an adapter registered as challenger, the evaluation feeds the gate, and a promoted
adapter is served at once; a dataset that fails its blocking checks trains nothing."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from assets.finetune import finetune_assets
from dagster_platform.agents import interactions
from dagster_platform.finetune import artifacts
from dagster_platform.finetune.dataset import load_split
from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.kafka.tables import ensure_tables
from dagster_platform.llm.registry import CHALLENGER, CHAMPION, AdapterRegistry
from dagster_platform.settings import Settings
from resources import FinetuneResource, LLMResource, WarehouseResource
from tests.support.state import live_settings, platform_resources
from tests.support.tiny_models import TINY_RECIPE, build_tiny_llm


def _gate(min_examples: int) -> dict:
    return {
        "primary": {"metric": "eval_loss", "direction": "lower", "margin": 0.0},
        "guardrails": [],
        "evaluation": {"max_eval_examples": 2, "max_new_tokens": 4, "agent_cases": 0},
        "min_examples": min_examples,
    }


def _interactions(conn: duckdb.DuckDBPyConnection) -> None:
    interactions.ensure_table(conn)
    ensure_tables(conn, FEEDBACK_EVENTS)
    rated = [
        ("ia-1", "현재 클러스터 가동율 알려줘?", "etl-prod 90.6 %", 1, None),
        ("ia-2", "How do I handle a full disk?", "Restart it.", -1, "Free space per rb-disk-full; "
         "mail ops@example.com"),
        ("ia-3", "Which Spark jobs use the most CPU?", "application_1 and application_2", -1, None),
    ]  # fmt: skip
    for offset, (interaction, question, answer, rating, correction) in enumerate(rated):
        interactions.record(
            conn,
            interactions.Interaction(interaction, "s", question, "answered", answer=answer),
        )
        conn.execute(
            "INSERT INTO feedback_events (kafka_topic, kafka_partition, kafka_offset, event_id, "
            "ts, feedback_id, interaction_id, rating, correction) "
            "VALUES ('llm-feedback', 0, ?, ?, ?, ?, ?, ?, ?)",
            [offset, f"e{offset}", datetime.now(UTC), f"fb{offset}", interaction, rating,
             correction],
        )  # fmt: skip


@pytest.fixture
def loop_state(state_dir: Path, sample_warehouse: Path, tmp_path: Path, monkeypatch) -> Settings:
    settings = live_settings(state_dir)
    shutil.copyfile(sample_warehouse, settings.warehouse_path)
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        _interactions(conn)
    monkeypatch.setenv("BASE_MODEL", str(build_tiny_llm(tmp_path / "tiny")))
    return settings


def _materialize(
    settings: Settings, tmp_path: Path, min_examples: int
) -> dg.ExecuteInProcessResult:
    recipe, gate = tmp_path / "recipe.yaml", tmp_path / "gate.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE), encoding="utf-8")
    gate.write_text(yaml.safe_dump(_gate(min_examples)), encoding="utf-8")
    with dg.instance_for_test() as instance:
        return dg.materialize(
            finetune_assets(settings),
            instance=instance,
            resources=platform_resources(
                warehouse=WarehouseResource(database=str(settings.warehouse_path)),
                finetune=FinetuneResource(recipe_path=str(recipe), gate_path=str(gate)),
                llm=LLMResource(),
            ),
            raise_on_error=False,
        )


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.models
def test_the_loop_trains_evaluates_promotes_and_serves(loop_state: Settings, tmp_path: Path):
    result = _materialize(loop_state, tmp_path, min_examples=5)
    assert result.success

    dataset = _metadata(result, "sft_dataset")
    assert dataset["counts"]["source"]["correction"] == 1  # the correction won over "Restart it."
    assert dataset["counts"]["source"]["feedback"] == 1  # the down vote without one is skipped
    assert dataset["scrubbed"] == {"email": 1}
    assert dataset["usable_feedback_total"] == 2
    path = artifacts.latest_dataset(loop_state.state_dir)
    rows = load_split(path, "train") + load_split(path, "eval")
    assert not any("ops@example.com" in r["completion"] for r in rows)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"enough_examples": True, "no_personal_data": True, "splits_disjoint": True}

    adapter = _metadata(result, "lora_adapter")
    assert adapter["registered_version"] == "1" and adapter["steps"] == 6
    assert adapter["loss_curve"].startswith("![training loss](data:image/png;base64,")
    registry = AdapterRegistry(loop_state.resolved_mlflow_tracking_uri, "ops-assistant")
    assert registry.by_alias(CHALLENGER).dataset_version == dataset["version"]

    evaluation = _metadata(result, "adapter_evaluation")
    assert "eval_loss" in evaluation["report"] and evaluation["champion_version"].startswith("none")

    promoted = _metadata(result, "promoted_adapter")
    assert promoted["action"] == "promoted", promoted["reasons"]
    assert registry.by_alias(CHAMPION).version == "1"
    served = LLMResource().service().client.served  # the same service the run promoted into
    assert served.adapter is not None and served.adapter.version == "1"
    with duckdb.connect(str(loop_state.warehouse_path)) as conn:
        assert conn.execute("SELECT action, champion_after FROM promotions").fetchall() == [
            ("promoted", "1")
        ]


@pytest.mark.models
def test_too_few_examples_fail_the_check_and_nothing_trains(loop_state: Settings, tmp_path: Path):
    result = _materialize(loop_state, tmp_path, min_examples=100_000)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["enough_examples"] is False
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"sft_dataset"}
    registry = AdapterRegistry(loop_state.resolved_mlflow_tracking_uri, "ops-assistant")
    assert registry.versions() == []
    with pytest.raises(artifacts.NoDataset):
        artifacts.latest_dataset(loop_state.state_dir)
