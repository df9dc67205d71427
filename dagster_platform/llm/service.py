"""The model that answers: the configured backend, serving the MLflow `@champion` adapter.

Every caller in a process shares one service per configuration (the base model loads once).
Before answering, the service checks the registry (at most every `check_interval_s`) and
swaps in a new champion; when the registry cannot be read or the new adapter fails to load,
the previous adapter keeps serving and `warning` says so, for the interaction record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.packaged_models import llm_model_dir
from dagster_platform.llm.base import (
    BACKENDS,
    AdapterInfo,
    Backend,
    LLMError,
    LLMUnavailable,
)
from dagster_platform.llm.client import LLMClient, ResiliencePolicy, Served
from dagster_platform.llm.registry import CHAMPION, AdapterRegistry, NoSuchVersion
from dagster_platform.llm.vllm_local import LocalVLLMServer, VLLMEnvironment
from dagster_platform.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class LLMConfig:
    backend: str
    base_model: str
    registered_model: str
    tracking_uri: str
    adapters_dir: Path
    vllm_base_url: str | None = None
    vllm_api_key: str | None = field(default=None, repr=False)
    vllm_max_lora_rank: int | None = None
    vllm_model: str | None = None  # the name a vLLM server serves the base under; None: asked
    policy: ResiliencePolicy = field(default_factory=ResiliencePolicy)
    check_interval_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMConfig:
        backend, vllm_base_url, vllm_model = resolve_backend(settings)
        return cls(
            backend=backend,
            base_model=resolve_base_model(settings),
            registered_model=settings.registered_model,
            tracking_uri=settings.resolved_mlflow_tracking_uri,
            adapters_dir=settings.state_dir / "adapters",
            vllm_base_url=vllm_base_url,
            vllm_api_key=settings.vllm_api_key,
            vllm_max_lora_rank=settings.vllm_max_lora_rank,
            vllm_model=vllm_model,
            policy=ResiliencePolicy(
                timeout_s=settings.llm_timeout_s,
                retries=settings.llm_retries,
                breaker_fail_max=settings.llm_breaker_fail_max,
                breaker_reset_s=settings.llm_breaker_reset_s,
                breaker_success_threshold=settings.llm_breaker_success_threshold,
            ),
        )


def resolve_base_model(settings: Settings) -> str:
    """BASE_MODEL (a folder or a model id), else the packaged SmolLM2 prepared in the state."""
    if settings.base_model:
        return settings.base_model
    return str(llm_model_dir(settings.models_dir))


def local_vllm_server(settings: Settings) -> LocalVLLMServer:
    """The vLLM server `dagster-platform vllm start` (and `make run`) runs on this machine."""
    environment = settings.vllm_environment or settings.vllm_dir / "venv"
    return LocalVLLMServer(
        environment=VLLMEnvironment(environment),
        run_dir=settings.vllm_dir,
        model_dir=Path(resolve_base_model(settings)),
        port=settings.vllm_port,
        max_lora_rank=settings.vllm_max_lora_rank,
    )


def resolve_backend(settings: Settings) -> tuple[str, str | None, str | None]:
    """The backend, vLLM URL and served model name that answer: `auto` takes VLLM_BASE_URL
    (an external server, which names its model itself), else the local vLLM server while it
    runs (serving the name it was started with), else transformers; `vllm-server` without a
    URL means the local server."""
    backend, url = settings.llm_backend, settings.vllm_base_url
    if backend == "auto" and url:
        return "vllm-server", url, None
    if backend in ("auto", "vllm-server") and not url:
        local = local_vllm_server(settings)
        if backend == "vllm-server" or local.process.running_pid() is not None:
            return "vllm-server", local.base_url, local.served_name
        return "transformers", None, None
    return backend, url, None


def make_backend(config: LLMConfig) -> Backend:
    """The backend named by LLM_BACKEND; GPU-only packages are imported only on their path."""
    if config.backend == "transformers":
        from dagster_platform.llm.transformers_backend import shared_backend

        folder = Path(config.base_model)
        if folder.is_absolute() and not (folder / "config.json").is_file():
            raise LLMUnavailable(
                f"no model at {folder}: run `dagster-platform models prepare` "
                "or set BASE_MODEL to a model folder"
            )
        return shared_backend(config.base_model, timeout_s=config.policy.timeout_s)
    if config.backend == "vllm-server":
        from dagster_platform.llm.vllm_server import VLLMServerBackend

        if not config.vllm_base_url:
            raise LLMUnavailable(
                "LLM_BACKEND=vllm-server needs VLLM_BASE_URL or the local server "
                "(`dagster-platform vllm start`)"
            )
        return VLLMServerBackend(
            config.vllm_base_url,
            model=config.vllm_model,
            timeout_s=config.policy.timeout_s,
            api_key=config.vllm_api_key,
            max_lora_rank=config.vllm_max_lora_rank,
        )
    if config.backend == "vllm-engine":
        from dagster_platform.llm.vllm_engine import VLLMEngineBackend

        return VLLMEngineBackend(config.base_model)
    raise LLMError(f"unknown LLM backend {config.backend!r}; expected one of {', '.join(BACKENDS)}")


def champion_adapter(
    tracking_uri: str, registered_model: str, adapters_dir: Path
) -> AdapterInfo | None:
    """The `@champion` version of the registered model as a local peft folder; None when
    there is no champion yet (the base model serves)."""
    registry = AdapterRegistry(tracking_uri, registered_model)
    try:
        return registry.local_adapter(CHAMPION, adapters_dir)
    except NoSuchVersion:
        return None


class LLMService:
    """A client plus the registry: what agents call to get answers from the champion."""

    def __init__(self, config: LLMConfig, client: LLMClient):
        self.config = config
        self.client = client
        self.warning: str | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        client.on_adapter_missing(lambda: self.refresh(force=True))

    def refresh(self, force: bool = False) -> Served:
        """Serve the current champion; keep the previous adapter when that fails."""
        with self._lock:
            now = time.monotonic()
            if (
                not force
                and self._checked_at is not None
                and now - self._checked_at < self.config.check_interval_s
            ):
                return self.client.served
            self._checked_at = now
            try:
                champion = champion_adapter(
                    self.config.tracking_uri, self.config.registered_model, self.config.adapters_dir
                )
            except Exception as exc:  # MLflow raises many types; the answer must still come
                return self._keep(f"the model registry could not be read ({exc})")
            try:
                self.client.serve_adapter(champion)
            except LLMError as exc:
                return self._keep(f"adapter {champion.name if champion else '?'} failed: {exc}")
            self.warning = None
            return self.client.served

    def _keep(self, why: str) -> Served:
        served = self.client.served
        self.warning = f"{why}; still serving {served.label}"
        log.warning("llm adapter unchanged", extra={"reason": self.warning})
        return served


class PinnedLLMService(LLMService):
    """Serves one given adapter (None: the base model) whatever the registry holds, so an
    evaluation can run the real assistant with each candidate in turn."""

    def __init__(self, config: LLMConfig, client: LLMClient, adapter: AdapterInfo | None):
        super().__init__(config, client)
        self.adapter = adapter

    def refresh(self, force: bool = False) -> Served:
        with self._lock:
            try:
                self.client.serve_adapter(self.adapter)
            except LLMError as exc:
                name = self.adapter.name if self.adapter else "base"
                return self._keep(f"pinned adapter {name} failed: {exc}")
            self.warning = None
            return self.client.served


_services: dict[LLMConfig, LLMService] = {}
_services_lock = threading.Lock()


def get_service(config: LLMConfig) -> LLMService:
    """The process-wide service of `config` (models load lazily, once per process)."""
    with _services_lock:
        service = _services.get(config)
        if service is None:
            service = _services[config] = LLMService(
                config, LLMClient(make_backend(config), config.policy)
            )
        return service
