"""Streaming assets and sensors in Dagster, against the real broker and a DuckDB file."""

import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.streaming import dead_letter_events, landing_assets, rollup_assets
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.events import RAW_EVENTS, SparkJobEventV1, encode
from dagster_platform.kafka.rollups import ROLLUPS
from dagster_platform.kafka.write import ConcurrentLanding
from dagster_platform.settings import get_settings
from resources import KafkaResource, WarehouseResource
from sensors.stream_sensors import STREAM_TAG, build_stream_sensor, build_stream_sensors
from tests.support.events import T0, produce, samples


@pytest.fixture
def resources(private_broker: EmbeddedBroker, tmp_path: Path, state_dir: Path) -> dict:
    """The warehouse and broker of one test; `state_dir` keeps what the landings record (the
    metrics samples) out of the checkout's state folder."""
    return {
        "warehouse": WarehouseResource(database=str(tmp_path / "warehouse.duckdb")),
        "kafka": KafkaResource(
            bootstrap_servers=private_broker.bootstrap_servers, timeout_seconds=4
        ),
    }


def job_event(app: str, state: str, minute: int, share: float) -> bytes:
    return encode(
        SparkJobEventV1(
            event_id=uuid.uuid4().hex,
            ts=T0 + timedelta(minutes=minute),
            application_id=app,
            cluster_id="etl-prod",
            name="user_feature_backfill",
            queue="root.etl.backfill",
            user="sypark",
            state=state,
            vcores=224,
            memory_gb=900.0,
            cpu_share_pct=share,
        )
    )


def query(resources: dict, sql: str) -> list[tuple]:
    with duckdb.connect(resources["warehouse"].database, read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_landing_then_rollups_and_dead_letters(
    private_broker: EmbeddedBroker, resources: dict
) -> None:
    produce(private_broker, "raw-data-stream", [*samples(3), b"{oops"])
    produce(private_broker, "raw-data-stream", [job_event("app_1", "RUNNING", 0, 31.4)])
    produce(private_broker, "raw-data-stream", [job_event("app_1", "KILLED", 2, 0.0)])
    result = dg.materialize(
        [*landing_assets, dead_letter_events, *rollup_assets], resources=resources
    )
    assert result.success
    (metrics,) = result.asset_materializations_for_node("land_raw_events")[:1]
    metadata = metrics.metadata
    assert metadata["rows_landed"].value == 12
    assert metadata["rows_dead_lettered"].value == 1
    assert metadata["remaining_lag"].value == 0
    assert metadata["dead_letter_reasons"].value == {"invalid_json": 1}
    assert sum(b - a for a, b in metadata["offset_ranges"].value.values()) == 15
    assert all(e.passed for e in result.get_asset_check_evaluations())
    per_minute = query(
        resources, "SELECT bucket, samples, cpu_avg FROM cluster_utilization_1m ORDER BY bucket"
    )
    assert [(b, n, avg) for b, n, avg in per_minute] == [
        (T0 + timedelta(minutes=m), 4, 51.5) for m in range(3)
    ]
    assert query(resources, "SELECT state, events FROM spark_job_state") == [("KILLED", 2)]
    (dead,) = result.asset_materializations_for_node("dead_letter_events")
    assert dead.metadata["dagster/row_count"].value == 1

    # a second batch: only the touched buckets are recomputed, late events folded in
    produce(private_broker, "raw-data-stream", samples(1, cpu=90.0))
    again = dg.materialize([*landing_assets, *rollup_assets], resources=resources)
    (cluster_1m,) = again.asset_materializations_for_node("cluster_utilization_1m")
    assert cluster_1m.metadata["keys_recomputed"].value == 1
    assert (
        query(
            resources,
            f"SELECT samples FROM cluster_utilization_1m WHERE bucket = '{T0.isoformat()}'",
        )[0][0]
        == 8
    )


def sensor_tick(sensor, instance, resources):
    context = dg.build_sensor_context(
        instance=instance,
        resources={"kafka": resources["kafka"], "warehouse": resources["warehouse"]},
    )
    return sensor(context)


RAW = build_stream_sensor(RAW_EVENTS, interval_seconds=1)


def skipped(result) -> str:
    """The readable reason of a tick that requested nothing."""
    assert not getattr(result, "run_requests", None)
    reason = result if isinstance(result, dg.SkipReason) else result.skip_reason
    return reason.skip_message


def reported(result) -> dict[str, dg.AssetMaterialization]:
    return {
        e.asset_key.path[-1]: e
        for e in result.asset_events
        if isinstance(e, dg.AssetMaterialization)
    }


def test_the_sensor_lands_a_batch_itself_and_reports_it_with_no_run(
    private_broker: EmbeddedBroker, resources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        assert "no backlog" in skipped(sensor_tick(RAW, instance, resources))
        produce(private_broker, "raw-data-stream", [*samples(2), b"{oops"])
        produce(private_broker, "raw-data-stream", [job_event("app_1", "RUNNING", 0, 31.4)])
        tick = sensor_tick(RAW, instance, resources)
        assert "landed here, no run" in skipped(tick)
        events = reported(tick)
        rollups = {spec.name for spec in ROLLUPS}
        assert set(events) == {"host_metrics", "spark_job_events", "dead_letter_events"} | rollups
        assert events["host_metrics"].metadata["rows_landed"].value == 8
        assert events["dead_letter_events"].metadata["dagster/row_count"].value == 1
        assert events["spark_job_state"].metadata["dagster/row_count"].value == 1
        (check,) = [e for e in tick.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
        assert check.passed and check.check_name == "nothing_dropped"
        for event in tick.asset_events:  # what the sensor daemon does with them
            instance.report_runless_asset_event(event)
        latest = instance.get_latest_materialization_event(dg.AssetKey("host_metrics"))
        assert latest.asset_materialization.metadata["dagster/row_count"].value == 8
        assert instance.get_runs() == []
        assert query(resources, "SELECT count(*) FROM cluster_utilization_1m") == [(2,)]
        # nothing new: no warehouse work, nothing reported; a clean batch reports no dead letters
        assert "no backlog" in skipped(sensor_tick(RAW, instance, resources))
        produce(private_broker, "raw-data-stream", samples(1, cpu=90.0))
        again = reported(sensor_tick(RAW, instance, resources))
    assert "dead_letter_events" not in again and "spark_job_state" in again
    assert again["cluster_utilization_1m"].metadata["keys_recomputed"].value == 1


def test_in_run_mode_the_sensor_requests_one_run_of_the_landing_and_what_follows(
    private_broker: EmbeddedBroker, resources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_STREAM_LANDING", "run")
    with dg.instance_for_test() as instance:
        assert "no backlog" in skipped(sensor_tick(RAW, instance, resources))
        produce(private_broker, "raw-data-stream", samples(1))
        wanted = sensor_tick(RAW, instance, resources)
        (request,) = wanted.run_requests
        assert request.tags[STREAM_TAG] == "raw_events"
        assert request.run_key is None
        derived = {spec.name for spec in ROLLUPS} | {"dead_letter_events"}
        selected = {k.path[-1] for k in request.asset_selection}
        assert selected == {"host_metrics", "spark_job_events"} | derived
        # once landed (and committed to the group), the backlog is gone
        assert dg.materialize(
            [*landing_assets, dead_letter_events, *rollup_assets],
            selection=list(request.asset_selection),
            resources=resources,
            instance=instance,
        ).success
        assert "no backlog" in skipped(sensor_tick(RAW, instance, resources))


def test_sensor_never_starts_the_same_work_twice_yet_retries_after_failure(
    private_broker: EmbeddedBroker, resources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_STREAM_LANDING", "run")
    produce(private_broker, "raw-data-stream", samples(1))
    job = dg.define_asset_job("land_raw", selection=["host_metrics", "spark_job_events"])
    resolved = dg.Definitions(assets=landing_assets, jobs=[job], resources=resources)
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            resolved.resolve_job_def("land_raw"), tags={STREAM_TAG: "raw_events"}
        )
        busy = skipped(sensor_tick(RAW, instance, resources))
        assert f"run {run.run_id}" in busy and "not starting the same work twice" in busy
        instance.report_run_failed(run)
        retry = sensor_tick(RAW, instance, resources)
        assert len(retry.run_requests) == 1


def test_sensor_skips_with_a_reason_when_the_broker_is_down(
    resources: dict, private_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_broker.stop()
    with dg.instance_for_test() as instance:
        result = sensor_tick(RAW, instance, resources)
    assert "broker unreachable" in skipped(result)


def test_the_sensors_are_evaluated_at_the_configured_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_STREAM_SENSOR_INTERVAL", "12")
    sensors = build_stream_sensors(get_settings())
    assert {s.name for s in sensors} == {
        "raw_events_backlog",
        "alert_events_backlog",
        "feedback_events_backlog",
    }
    assert {s.minimum_interval_seconds for s in sensors} == {12}


def test_an_overtaken_landing_run_is_a_skip_not_a_failure(
    private_broker: EmbeddedBroker, resources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FAKE overtake: `land_stream` raises what the writer raises when another run committed
    the same partitions first (tests/kafka/test_landing.py makes the real one happen); the
    asset's answer to it is what is tested here."""
    import assets.streaming

    def overtaken(*_args: object, **_kwargs: object) -> None:
        raise ConcurrentLanding("raw-data-stream partition 0 advanced since this run started")

    produce(private_broker, "raw-data-stream", samples(1))
    assert dg.materialize(landing_assets[:1], resources=resources).success  # the tables exist
    monkeypatch.setattr(assets.streaming, "land_stream", overtaken)
    with dg.instance_for_test() as instance:
        result = dg.materialize(landing_assets[:1], resources=resources, instance=instance)
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    assert result.asset_materializations_for_node(landing_assets[0].node_def.name) == []
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert any("skipped, another run landed this range" in m for m in logged)


def test_a_landing_that_fails_fails_the_tick_and_the_next_tick_lands_the_range(
    private_broker: EmbeddedBroker, resources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FAKE failure (an error nothing real raises on demand) in the first landing only: the
    tick fails, which the UI shows red, and the next tick lands the same messages."""
    import assets.streaming

    real = assets.streaming.land_stream
    calls = []

    def fails_once(*args: object, **kwargs: object):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(assets.streaming, "land_stream", fails_once)
    produce(private_broker, "raw-data-stream", samples(2))
    with dg.instance_for_test() as instance:
        with pytest.raises(RuntimeError, match="disk full"):
            sensor_tick(RAW, instance, resources)
        again = reported(sensor_tick(RAW, instance, resources))
    assert again["host_metrics"].metadata["rows_landed"].value == 8
    assert query(resources, "SELECT count(*) FROM host_metrics") == [(8,)]


def test_a_tick_while_an_earlier_one_still_lands_here_leaves_it_to_finish(
    private_broker: EmbeddedBroker, resources: dict
) -> None:
    """An earlier tick past the sensor timeout still landing in the code server: a FAKE of
    it, holding the family's landing lock the way that tick does."""
    from sensors import stream_sensors

    produce(private_broker, "raw-data-stream", samples(1))
    with dg.instance_for_test() as instance, stream_sensors._landing_here["raw_events"]:
        said = skipped(sensor_tick(RAW, instance, resources))
    assert "still landing raw-data-stream" in said
    with dg.instance_for_test() as instance:
        assert "landed here" in skipped(sensor_tick(RAW, instance, resources))
