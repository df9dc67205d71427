"""The service serves the MLflow @champion adapter (a real MLflow store in a temp folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_platform.llm.base import GenerationConfig, LLMUnavailable, Message
from dagster_platform.llm.client import ResiliencePolicy
from dagster_platform.llm.service import (
    LLMConfig,
    LLMService,
    get_service,
    local_vllm_server,
    make_backend,
    resolve_backend,
)
from dagster_platform.settings import Settings
from tests.support.registry import NAME, Registry
from tests.support.tiny_models import build_tiny_adapter, build_tiny_llm

QUESTION = [Message("user", "How busy is cluster-a?")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("tiny-service")
    base = build_tiny_llm(root / "base")
    return base, [build_tiny_adapter(base, root / f"a{i}", seed=i) for i in (1, 2)]


def _config(base: Path, tmp_path: Path, tracking_uri: str) -> LLMConfig:
    return LLMConfig(
        backend="transformers",
        base_model=str(base),
        registered_model=NAME,
        tracking_uri=tracking_uri,
        adapters_dir=tmp_path / "adapters",
        policy=ResiliencePolicy(retries=0),
        check_interval_s=0.0,
    )


def test_serves_the_base_model_then_each_new_champion(
    tiny: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    base, adapters = tiny
    registry = Registry(tmp_path)
    service = get_service(_config(base, tmp_path, registry.uri))
    assert service.refresh().adapter is None
    assert service.warning is None

    v1 = registry.register(adapters[0])
    served = service.refresh()
    assert served.adapter is not None and served.adapter.version == v1
    assert served.adapter.source == f"models:/{NAME}@champion"
    answer = service.client.chat(QUESTION, GenerationConfig(max_new_tokens=4))
    assert answer.adapter == f"{NAME}-v{v1}"

    v2 = registry.register(adapters[1])
    assert service.refresh().adapter.version == v2
    assert service.client.backend.loaded_adapters() == [f"{NAME}-v{v2}"]  # v1 unloaded
    assert service.refresh(force=False).adapter.version == v2
    assert service is get_service(_config(base, tmp_path, registry.uri))  # once per process


def test_a_champion_that_fails_to_load_keeps_the_previous_one(
    tiny: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    base, adapters = tiny
    registry = Registry(tmp_path)
    config = _config(base, tmp_path, registry.uri)
    service = LLMService(config, get_service(config).client)
    good = registry.register(adapters[0])
    assert service.refresh().adapter.version == good

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "README.md").write_text("not an adapter")
    registry.register(junk)
    served = service.refresh()
    assert served.adapter.version == good
    assert "holds no peft adapter" in service.warning
    assert f"still serving base + {NAME}-v{good}" in service.warning


def test_an_unreadable_registry_keeps_serving_and_says_why(
    tiny: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    base, _ = tiny
    (tmp_path / "not-a-folder").write_text("a file where the store's folder should be")
    config = _config(base, tmp_path, f"sqlite:///{tmp_path / 'not-a-folder' / 'mlflow.db'}")
    service = LLMService(config, get_service(config).client)
    assert service.refresh().adapter is None
    assert "model registry could not be read" in service.warning


def test_a_missing_base_model_folder_says_how_to_prepare_it(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    with pytest.raises(LLMUnavailable, match="models prepare"):
        make_backend(LLMConfig.from_settings(settings))


def test_the_backend_follows_the_url_the_local_server_or_falls_back_to_transformers(
    tmp_path: Path,
) -> None:
    """`auto` with nothing running is transformers; a pid file of a live process (this test's
    own, standing in for the server) means the local vLLM server, named as it serves the base;
    VLLM_BASE_URL always wins, and vllm-server without one means the local server."""
    import os

    settings = Settings(state_dir=tmp_path, vllm_port=18123)
    assert resolve_backend(settings) == ("transformers", None, None)
    assert resolve_backend(settings.model_copy(update={"llm_backend": "vllm-server"})) == (
        "vllm-server",
        "http://127.0.0.1:18123",
        "SmolLM2-135M-Instruct",
    )
    pid_file = local_vllm_server(settings).process.pid_file
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n")
    config = LLMConfig.from_settings(settings)
    assert (config.backend, config.vllm_base_url) == ("vllm-server", "http://127.0.0.1:18123")
    assert config.vllm_model == "SmolLM2-135M-Instruct" and config.vllm_max_lora_rank == 16
    external = settings.model_copy(update={"vllm_base_url": "http://gpu-box:8000/v1"})
    assert resolve_backend(external) == ("vllm-server", "http://gpu-box:8000/v1", None)
    light = settings.model_copy(update={"llm_backend": "transformers"})
    assert resolve_backend(light) == ("transformers", None, None)
