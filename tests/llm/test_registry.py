"""The adapter registry over a real MLflow store in a temp folder (sqlite + local artifacts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_platform.llm.base import AdapterLoadError
from dagster_platform.llm.registry import (
    AdapterRegistry,
    NoSuchVersion,
    RegistryError,
)
from dagster_platform.llm.transformers_backend import TransformersBackend
from tests.support.registry import log_adapter_run
from tests.support.tiny_models import build_tiny_adapter, build_tiny_llm

MODEL = "ops-assistant"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-registry")
    base = build_tiny_llm(root / "base")
    return base, build_tiny_adapter(base, root / "adapter")


def _store(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def test_registration_sets_challenger_and_downloads_a_peft_folder(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    base, adapter = tiny
    uri = _store(tmp_path)
    registry = AdapterRegistry(uri, MODEL)
    assert registry.versions() == [] and registry.by_alias("challenger") is None

    run_id = log_adapter_run(uri, tmp_path, adapter)
    first = registry.register(run_id, tags={"dataset_version": "0123456789abcdef"})
    assert (first.version, first.aliases, first.run_id) == ("1", ("challenger",), run_id)
    assert first.source.endswith("/adapter") and first.dataset_version == "0123456789abcdef"

    local = registry.local_adapter("challenger", tmp_path / "adapters")
    assert local.path == tmp_path / "adapters" / f"{MODEL}-v1"
    assert local.version == "1" and local.source == f"models:/{MODEL}@challenger"
    assert {p.name for p in local.path.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    backend = TransformersBackend(str(base))
    backend.load_adapter(local.name, local.path)  # a real peft folder
    assert backend.loaded_adapters() == [local.name]

    (local.path / "kept.txt").write_text("downloaded once")
    again = registry.local_adapter("1", tmp_path / "adapters")
    assert (again.path / "kept.txt").is_file() and again.source == f"models:/{MODEL}/1"

    second = registry.register(log_adapter_run(uri, tmp_path, adapter))
    assert [v.version for v in registry.versions()] == ["2", "1"]
    assert registry.get("1").aliases == () and registry.get("2").aliases == ("challenger",)

    registry.set_alias("champion", "1")
    assert registry.by_alias("champion").version == "1"
    assert registry.get("1").aliases == ("champion",)
    registry.delete_alias("champion")
    registry.delete_alias("champion")  # nothing to do the second time
    assert registry.by_alias("champion") is None
    registry.set_tags(second.version, {"metric.eval_loss": "1.25", "metric.bad": "n/a"})
    assert registry.get("2").metrics == {"eval_loss": 1.25}


def test_a_run_without_an_adapter_registers_nothing(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    registry = AdapterRegistry(uri, MODEL)
    empty = log_adapter_run(uri, tmp_path, None)
    with pytest.raises(RegistryError, match="no peft adapter under 'adapter'"):
        registry.register(empty)
    with pytest.raises(RegistryError, match="no MLflow run"):
        registry.register("0" * 32)
    assert registry.versions() == []


def test_a_run_that_did_not_finish_registers_nothing(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    uri = _store(tmp_path)
    registry = AdapterRegistry(uri, MODEL)
    killed = log_adapter_run(uri, tmp_path, tiny[1], status="KILLED")
    with pytest.raises(RegistryError, match="KILLED, not FINISHED"):
        registry.register(killed)
    assert registry.versions() == []


def test_unknown_versions_and_aliases_are_named(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    uri = _store(tmp_path)
    registry = AdapterRegistry(uri, MODEL)
    registry.register(log_adapter_run(uri, tmp_path, tiny[1]))
    with pytest.raises(NoSuchVersion, match="has no version '7'"):
        registry.get("7")
    with pytest.raises(NoSuchVersion, match="has no version '7'"):
        registry.set_alias("champion", "7")
    with pytest.raises(NoSuchVersion, match="no version aliased 'champion'"):
        registry.local_adapter("champion", tmp_path / "adapters")
    assert registry.by_alias("champion") is None


def test_a_garbage_adapter_config_is_refused_at_download(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{this is not json")
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    registry = AdapterRegistry(uri, MODEL)
    version = registry.register(log_adapter_run(uri, tmp_path, broken))
    with pytest.raises(AdapterLoadError, match="not valid JSON"):
        registry.local_adapter(version.version, tmp_path / "adapters")
    assert not (tmp_path / "adapters" / f"{MODEL}-v1").exists()  # nothing half-downloaded
