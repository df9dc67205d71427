from pathlib import Path

import pytest
from pydantic import ValidationError

from dagster_platform.settings import REPO_ROOT, get_settings


def test_defaults_live_in_the_checkout(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_PLATFORM_STATE")
    settings = get_settings()
    assert settings.state_dir == REPO_ROOT / ".state"
    assert settings.data_dir == REPO_ROOT / "data" / "sample"
    assert settings.embedded_broker
    assert settings.bootstrap_servers == f"127.0.0.1:{settings.broker_port}"
    assert ".state/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_environment_overrides_every_path_and_endpoint(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_DATA", str(tmp_path / "in"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("LLM_BACKEND", "vllm-server")
    monkeypatch.setenv("VLLM_BASE_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    settings = get_settings()
    assert settings.state_dir == state_dir
    assert settings.warehouse_path == state_dir / "warehouse.duckdb"
    assert settings.data_dir == tmp_path / "in"
    assert not settings.embedded_broker
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.llm_backend == "vllm-server"
    assert settings.resolved_mlflow_tracking_uri == "http://mlflow:5000"


def test_settings_are_read_when_asked_not_at_import(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = get_settings().state_dir
    monkeypatch.setenv("DAGSTER_PLATFORM_STATE", str(state_dir / "other"))
    assert get_settings().state_dir == first / "other"


def test_unknown_llm_backend_is_a_clear_error(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_BACKEND", "openai")
    with pytest.raises(ValidationError, match="LLM_BACKEND"):
        get_settings()
