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


def test_a_profile_fills_what_the_environment_leaves_out(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PLATFORM_STATE")
    monkeypatch.setenv("DAGSTER_PLATFORM_PROFILE", "docker")
    settings = get_settings()
    assert settings.profile == "docker"
    assert settings.state_dir == Path("/var/lib/dagster-platform")
    assert settings.bootstrap_servers == "kafka:9092" and not settings.embedded_broker
    assert settings.chroma_host == "chroma:8000"
    assert settings.resolved_mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.llm_backend == "transformers"

    monkeypatch.setenv("DAGSTER_PLATFORM_PROFILE", "k8s")
    settings = get_settings()
    assert settings.llm_backend == "vllm-server"
    assert settings.vllm_base_url == "http://vllm:8000/v1"


def test_the_environment_wins_over_the_profile(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_PROFILE", "k8s")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-0.kafka:9093")
    monkeypatch.setenv("LLM_BACKEND", "transformers")
    settings = get_settings()
    assert settings.state_dir == state_dir
    assert settings.bootstrap_servers == "broker-0.kafka:9093"
    assert settings.llm_backend == "transformers"
    assert settings.chroma_host == "chroma:8000"


def test_every_profile_default_is_a_setting() -> None:
    from dagster_platform.settings import PROFILES, Settings

    assert set(PROFILES) == {"local", "docker", "k8s"}
    for profile in PROFILES.values():
        Settings.model_validate(profile)
        assert set(profile) <= set(Settings.model_fields)


def test_an_unknown_profile_is_a_clear_error(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_PROFILE", "production")
    with pytest.raises(ValidationError, match="DAGSTER_PLATFORM_PROFILE"):
        get_settings()
