"""The stack's Postgres-backed Dagster instance (docker/dagster.yaml), on a real PostgreSQL:
the whole ingestion group materialized through it, and read back from Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from confluent_kafka import Producer
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster_postgres import (
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)

from dagster_platform.definitions import defs
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.events import (
    AlertV1,
    FeedbackV1,
    HostMetricV1,
    SparkJobEventV1,
    encode,
)
from dagster_platform.settings import REPO_ROOT
from resources import DataFolderResource, KafkaResource, WarehouseResource
from tests.support.postgres_server import (
    PostgresServer,
    PostgresUnavailable,
    postgres_server,
    server_bin_dir,
)

STACK_INSTANCE = REPO_ROOT / "docker" / "dagster.yaml"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
GROUP = "ingestion"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; the tests fail (never skip) without one."""
    missing = None
    try:
        server_bin_dir()
    except PostgresUnavailable as exc:
        missing = str(exc)
    if missing:
        pytest.fail(missing, pytrace=False)
    with postgres_server() as server:
        yield server


@pytest.fixture
def dagster_home(
    postgres: PostgresServer, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """DAGSTER_HOME holding the stack's dagster.yaml, pointed at a fresh database."""
    config = yaml.safe_load(STACK_INSTANCE.read_text(encoding="utf-8"))
    # The stack keeps compute logs and artifacts in its volume under /var/lib/dagster-platform,
    # which a test cannot write to; those two folders are the only change. Every piece of
    # state that matters here (runs, event log, schedules, pools) stays as the stack has it:
    # in Postgres, configured from the DAGSTER_POSTGRES_* variables below.
    for section in ("compute_logs", "local_artifact_storage"):
        assert config[section]["config"]["base_dir"].startswith("/var/lib/dagster-platform/")
        config[section]["config"]["base_dir"] = str(tmp_path / section)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    database = postgres.create_database(f"dagster_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_HOST", postgres.host)
    monkeypatch.setenv("DAGSTER_POSTGRES_PORT", str(postgres.port))
    monkeypatch.setenv("DAGSTER_POSTGRES_USER", postgres.user)
    monkeypatch.setenv("DAGSTER_POSTGRES_PASSWORD", postgres.password)
    monkeypatch.setenv("DAGSTER_POSTGRES_DB", database)
    return home


def test_the_stack_instance_keeps_its_state_in_postgres(dagster_home: Path) -> None:
    with dg.DagsterInstance.get() as instance:  # what the stack does: DAGSTER_HOME
        assert instance.is_persistent
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # the stack's pools: every pool admits one step at a time, kept in Postgres too
        assert instance.event_log_storage.supports_global_concurrency_limits
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


# -- the ingestion group, materialized through that instance --------------------------------


def ingestion_assets() -> list[dg.AssetsDefinition]:
    """Every asset definition of the code location in the ingestion group."""
    selected = [
        a
        for a in defs().assets or []
        if isinstance(a, dg.AssetsDefinition) and GROUP in a.group_names_by_key.values()
    ]
    assert all(set(a.group_names_by_key.values()) == {GROUP} for a in selected)
    return selected


def events(tag: str) -> dict[str, list[bytes]]:
    """A few events per topic, with a bad message and an orphan feedback to dead-letter."""
    ids = iter(f"{tag}-{n}" for n in range(1000))
    metrics = [
        HostMetricV1(
            event_id=next(ids),
            ts=T0 + timedelta(minutes=m, seconds=h),
            cluster_id="etl-prod",
            host_id=f"etl-prod-worker-{h:02d}",
            cpu_pct=40.0 + h,
            memory_pct=60.0,
            disk_pct=70.0,
        )
        for m in range(2)
        for h in range(3)
    ]
    job = SparkJobEventV1(
        event_id=next(ids),
        ts=T0,
        application_id=f"app_{tag}",
        cluster_id="etl-prod",
        name="user_feature_backfill",
        queue="root.etl.backfill",
        user="sypark",
        state="RUNNING",
        vcores=224,
        memory_gb=900.0,
        cpu_share_pct=31.4,
    )
    alert = AlertV1(
        event_id=next(ids),
        ts=T0,
        alert_id=f"alert-{tag}",
        cluster_id="etl-prod",
        host_id="etl-prod-worker-01",
        severity="sev2",
        rule="cpu_high",
        metric="cpu_pct",
        value=97.0,
        threshold=90.0,
        message="CPU above 90% for 5 minutes",
    )
    orphan = FeedbackV1(
        event_id=next(ids), ts=T0, feedback_id=f"fb-{tag}", interaction_id="ia-none", rating=1
    )
    return {
        "raw-data-stream": [*map(encode, metrics), encode(job), b"{not json"],
        "ops-alerts": [encode(alert)],
        "llm-feedback": [encode(orphan)],
    }


def produce(broker: EmbeddedBroker, messages: dict[str, list[bytes]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 5})
    for topic, values in messages.items():
        for value in values:
            producer.produce(topic, value=value)
    assert producer.flush(15) == 0


def count(database: Path, table: str) -> int:
    with duckdb.connect(str(database), read_only=True) as conn:
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_the_ingestion_group_materializes_through_postgres_and_reads_back(
    dagster_home: Path, postgres: PostgresServer, kafka_broker: EmbeddedBroker, state_dir: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    produce(kafka_broker, events(tag))
    assets = ingestion_assets()
    keys = {key for a in assets for key in a.keys}
    check_keys = {check for a in assets for check in a.check_keys}
    warehouse = state_dir / "warehouse.duckdb"

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = dg.materialize(
            assets,
            instance=instance,
            resources={
                "warehouse": WarehouseResource(database=str(warehouse)),
                "data_folder": DataFolderResource(folder=str(SAMPLE_DIR)),
                "kafka": KafkaResource(
                    bootstrap_servers=kafka_broker.bootstrap_servers, timeout_seconds=5
                ),
            },
        )
        assert result.success
        run_id = result.run_id

        # what the run reported, read back from the instance's storage, not from the result
        for key in keys:
            latest = instance.get_latest_materialization_event(key)
            assert latest is not None, key
            assert latest.run_id == run_id
            metadata = latest.asset_materialization.metadata
            assert metadata["dagster/row_count"].value == count(warehouse, key.path[-1]), key
            (record,) = instance.fetch_materializations(key, limit=10).records
            assert record.event_log_entry == latest
        # the events of this test landed: those of other tests on the shared broker may too
        raw = instance.get_latest_materialization_event(dg.AssetKey("host_metrics"))
        metadata = raw.asset_materialization.metadata
        assert metadata["rows_landed"].value >= 6
        assert metadata["remaining_lag"].value == 0
        assert metadata["dead_letter_reasons"].value.get("invalid_json", 0) >= 1
        dead = instance.get_latest_materialization_event(dg.AssetKey("dead_letter_events"))
        assert dead.asset_materialization.metadata["dagster/row_count"].value >= 2
        with duckdb.connect(str(warehouse), read_only=True) as conn:
            mine = conn.execute(
                "SELECT count(*) FROM host_metrics WHERE event_id LIKE ?", [f"{tag}-%"]
            ).fetchone()[0]
        assert mine == 6

        # every check evaluation of the group was stored, and passed
        assert len(check_keys) == len(result.get_asset_check_evaluations())
        for check in check_keys:
            stored = instance.get_latest_asset_check_evaluation_record(check)
            assert stored is not None, check
            assert stored.run_id == run_id
            assert stored.status == AssetCheckExecutionRecordStatus.SUCCEEDED, check
            assert stored.event.asset_check_evaluation.passed

    # a second instance object on the same database sees it all: the state is in Postgres
    with dg.DagsterInstance.from_config(str(dagster_home)) as again:
        (run,) = again.get_runs()
        assert run.run_id == run_id
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert {k for k in keys if again.get_latest_materialization_event(k)} == keys
        assert again.get_latest_asset_check_evaluation_record(next(iter(check_keys))) is not None

    # and so does Postgres itself, asked without Dagster
    conn = postgres.connect(dg.EnvVar("DAGSTER_POSTGRES_DB").get_value())
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_id = %s", [run_id])
            assert cursor.fetchall() == [("SUCCESS",)]
            cursor.execute(
                "SELECT count(DISTINCT asset_key) FROM event_logs "
                "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                [run_id],
            )
            assert cursor.fetchone()[0] == len(keys)
    finally:
        conn.close()
