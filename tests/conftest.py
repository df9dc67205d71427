"""Shared fixtures: a real embedded Kafka broker per session, temp state and data folders."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.settings import REPO_ROOT

SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Tansu broker over TCP for the whole session."""
    broker = EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("DAGSTER_PLATFORM_STATE", str(state))
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "DAGSTER_PLATFORM_DATA",
        "DAGSTER_PLATFORM_BROKER_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    return state


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private copy of the sample data that a test may break."""
    target = tmp_path / "data"
    shutil.copytree(SAMPLE_DIR, target)
    return target
