"""Shared fixtures: a real embedded Kafka broker per session, temp state and data folders.

Tests that use a real component carry its marker (`kafka`, `models`, `postgres`, `vllm`), so a
fast subset runs with e.g. `pytest -m "not kafka and not models and not postgres and not vllm"`.
A test that asks for a broker, Postgres or vLLM fixture is marked here; one that starts its own
or loads a packaged model says so with `pytest.mark.kafka` / `pytest.mark.models` itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.llm.vllm_local import LocalVLLMServer
from tests.support.state import (
    SAMPLE_DIR,
    isolate_environment,
    load_sample_warehouse,
)
from tests.support.vllm import session_server

COMPONENT_FIXTURES = {
    "kafka_broker": "kafka",
    "private_broker": "kafka",
    "postgres": "postgres",
    "vllm_server": "vllm",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in COMPONENT_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(COMPONENT_FIXTURES[fixture])


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Tansu broker over TCP for the whole session."""
    broker = EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalVLLMServer]:
    """One real vLLM CPU server for the whole session, serving the packaged SmolLM2."""
    server = session_server(tmp_path_factory.mktemp("vllm"))
    server.start(timeout=600)
    yield server
    server.stop()


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


@pytest.fixture(scope="session")
def sample_warehouse_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load_sample_warehouse(tmp_path_factory.mktemp("warehouse") / "sample.duckdb")


@pytest.fixture
def sample_warehouse(sample_warehouse_template: Path, tmp_path: Path) -> Path:
    """A private copy of the loaded sample warehouse that a test may change."""
    target = tmp_path / "warehouse.duckdb"
    shutil.copyfile(sample_warehouse_template, target)
    return target
