"""Shared fixtures: a real embedded Kafka broker per session, temp state and data folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from dagster_platform.ingestion.readers import read_source
from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.ingestion.validation import to_typed
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.tables import ensure_all_tables
from dagster_platform.rollups import ROLLUPS
from dagster_platform.settings import REPO_ROOT, Settings
from dagster_platform.warehouse import replace_table

SAMPLE_DIR = REPO_ROOT / "data" / "sample"
ONTOLOGY_DIR = REPO_ROOT / "data" / "ontology"
ROLES_FILE = REPO_ROOT / "data" / "roles.yaml"
PREPARED_MODELS = REPO_ROOT / ".state" / "models"  # what `make test` prepared


def live_settings(state_dir: Path, data: Path = SAMPLE_DIR) -> Settings:
    """Settings of a throwaway state folder whose models are the checkout's prepared ones."""
    live = Settings(state_dir=state_dir, data_dir=data, ontology_dir=ONTOLOGY_DIR)
    live.state_dir.mkdir(parents=True)
    live.models_dir.symlink_to(PREPARED_MODELS.resolve(), target_is_directory=True)
    return live


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Tansu broker over TCP for the whole session."""
    broker = EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


OUR_ENVIRONMENT = (
    "DAGSTER_PLATFORM_PROFILE",
    "KAFKA_BOOTSTRAP_SERVERS",
    "DAGSTER_PLATFORM_DATA",
    "DAGSTER_PLATFORM_BROKER_PORT",
    "DAGSTER_PLATFORM_ONTOLOGY",
    "DAGSTER_PLATFORM_ROLES",
    "YARN_RESOURCE_MANAGER_URL",
    "CHROMA_HOST",
    "EMBEDDING_MODEL",
    "MLFLOW_TRACKING_URI",
    "LLM_BACKEND",
    "VLLM_BASE_URL",
    "VLLM_API_KEY",
    "BASE_MODEL",
    "REGISTERED_MODEL",
    "LLM_TIMEOUT_S",
    "LLM_RETRIES",
    "LLM_BREAKER_FAIL_MAX",
    "LLM_BREAKER_RESET_S",
    "LLM_BREAKER_SUCCESS_THRESHOLD",
    "DAGSTER_PLATFORM_API_KEYS",
    "DAGSTER_PLATFORM_API_RATE_LIMIT",
    "DAGSTER_PLATFORM_FINETUNE_THRESHOLD",
    "DAGSTER_PLATFORM_FINETUNE_CRON",
    "DAGSTER_PLATFORM_FINETUNE_TIMEZONE",
)


def isolate_environment(monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
    """Point the platform at `state` and forget every setting this shell may carry."""
    monkeypatch.setenv("DAGSTER_PLATFORM_STATE", str(state))
    for name in OUR_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, for tests that count every message on a topic or stop it."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    isolate_environment(monkeypatch, state)
    return state


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private copy of the sample data that a test may break."""
    target = tmp_path / "data"
    shutil.copytree(SAMPLE_DIR, target)
    return target


def load_sample_warehouse(path: Path, data: Path = SAMPLE_DIR) -> Path:
    """A DuckDB file holding the typed sample tables and the (empty) stream and rollup tables,
    as the ingestion assets leave it, without running Dagster."""
    with duckdb.connect(str(path)) as conn:
        for spec in SOURCES:
            replace_table(conn, spec.name, to_typed(read_source(spec, data)))
        ensure_all_tables(conn)
        for rollup in ROLLUPS:
            conn.execute(rollup.create)
    return path


@pytest.fixture(scope="session")
def sample_warehouse_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load_sample_warehouse(tmp_path_factory.mktemp("warehouse") / "sample.duckdb")


@pytest.fixture
def sample_warehouse(sample_warehouse_template: Path, tmp_path: Path) -> Path:
    """A private copy of the loaded sample warehouse that a test may change."""
    target = tmp_path / "warehouse.duckdb"
    shutil.copyfile(sample_warehouse_template, target)
    return target
