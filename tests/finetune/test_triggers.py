"""The loop's triggers: the feedback sensor and the nightly schedule decide from the usable
feedback totals in the materialization metadata, on a real Dagster instance."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.finetune import FINETUNE_TAG
from dagster_platform.agents import interactions
from dagster_platform.finetune.triggers import USABLE_FEEDBACK_TOTAL, usable_feedback_total
from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.kafka.tables import ensure_tables
from dagster_platform.settings import get_settings
from resources import FinetuneResource
from sensors.finetune_sensors import finetune_job, new_feedback, nightly_finetune

FINETUNE = {"finetune": FinetuneResource()}  # the threshold of the environment, 3 here


def _landed(instance: dg.DagsterInstance, asset: str, total: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=asset, metadata={USABLE_FEEDBACK_TOTAL: total})
    )


@pytest.fixture
def instance(state_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DAGSTER_PLATFORM_FINETUNE_THRESHOLD", "3")
    with dg.instance_for_test() as instance:
        yield instance


def test_usable_feedback_counts_up_votes_and_corrections(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        assert usable_feedback_total(conn) == 0  # nothing landed yet
        interactions.ensure_table(conn)
        ensure_tables(conn, FEEDBACK_EVENTS)
        rows = [(1, None), (-1, None), (-1, "better answer"), (0, "  "), (0, None), (1, "x")]
        for offset, (rating, correction) in enumerate(rows):
            conn.execute(
                "INSERT INTO feedback_events (kafka_topic, kafka_partition, kafka_offset, "
                "event_id, ts, feedback_id, interaction_id, rating, correction) "
                "VALUES ('llm-feedback', 0, ?, ?, now(), ?, 'ia-1', ?, ?)",
                [offset, f"e{offset}", f"fb{offset}", rating, correction],
            )
        assert usable_feedback_total(conn) == 3


def test_sensor_waits_for_the_threshold_then_requests_once(instance) -> None:
    _landed(instance, "feedback_events", 2)
    result = new_feedback(dg.build_sensor_context(instance=instance, resources=FINETUNE))
    assert isinstance(result, dg.SkipReason)
    assert "2 new usable feedback" in result.skip_message

    _landed(instance, "feedback_events", 3)
    result = new_feedback(dg.build_sensor_context(instance=instance, resources=FINETUNE))
    assert isinstance(result, dg.SensorResult)
    assert len(result.run_requests) == 1 and result.cursor == "3"

    again = new_feedback(dg.build_sensor_context(instance=instance, cursor="3", resources=FINETUNE))
    assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message


def test_sensor_counts_from_the_last_dataset(instance) -> None:
    _landed(instance, "feedback_events", 10)
    _landed(instance, "sft_dataset", 9)
    assert isinstance(
        new_feedback(dg.build_sensor_context(instance=instance, resources=FINETUNE)), dg.SkipReason
    )
    _landed(instance, "feedback_events", 12)
    result = new_feedback(dg.build_sensor_context(instance=instance, resources=FINETUNE))
    assert isinstance(result, dg.SensorResult) and result.run_requests


def test_sensor_does_not_start_a_second_loop(instance) -> None:
    _landed(instance, "feedback_events", 5)
    instance.add_run(
        dg.DagsterRun(
            job_name=finetune_job.name,
            run_id=str(uuid.uuid4()),
            tags={FINETUNE_TAG: "loop"},
            status=dg.DagsterRunStatus.STARTED,
        )
    )
    result = new_feedback(dg.build_sensor_context(instance=instance, resources=FINETUNE))
    assert isinstance(result, dg.SkipReason) and "in flight" in result.skip_message


def test_nightly_schedule_runs_at_three_and_skips_without_new_feedback(instance) -> None:
    schedule = nightly_finetune(get_settings())
    assert schedule.cron_schedule == "0 3 * * *"
    first = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert first.run_requests, "the first night builds the first dataset"

    _landed(instance, "feedback_events", 4)
    _landed(instance, "sft_dataset", 4)
    quiet = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert not quiet.run_requests and "no new usable feedback" in quiet.skip_message

    _landed(instance, "feedback_events", 5)
    night = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert night.run_requests
