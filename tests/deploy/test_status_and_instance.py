"""`dagster-platform status` and the Dagster instance the dev launcher writes."""

import json
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from dagster_platform.cli import app
from dagster_platform.deploy.instance import write_instance_config
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.settings import get_settings


def status_json(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_status_reports_a_reachable_broker_and_its_topics(
    state_dir: Path, kafka_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = status_json(monkeypatch, KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap_servers)
    assert report["broker"]["mode"] == "external"
    assert report["broker"]["reachable"] is True
    assert report["broker"]["topics"]["raw-data-stream"] == 3
    assert report["broker"]["missing_topics"] == []
    assert report["state_dir"] == {"path": str(state_dir), "exists": False}
    assert report["warehouse"]["state"].startswith("not created yet")
    assert all(report["data_dir"]["sources_present"].values())


def test_status_says_when_the_broker_is_down_and_models_are_missing(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = status_json(monkeypatch, DAGSTER_PLATFORM_BROKER_PORT=str(free_port()))
    assert report["broker"]["mode"] == "embedded"
    assert report["broker"]["reachable"] is False
    assert "did not answer" in report["broker"]["error"]
    assert all("missing" in value for value in report["models"].values())


def test_plain_status_is_readable(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_BROKER_PORT", str(free_port()))
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0
    assert "state_dir:" in result.stdout and "broker:" in result.stdout


def test_instance_config_limits_every_pool_to_one(state_dir: Path) -> None:
    home = write_instance_config(get_settings())
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.python_log_level == "INFO"
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 30
    finally:
        instance.dispose()
