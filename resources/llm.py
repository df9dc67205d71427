"""The LLM every agent and evaluation calls: one resource over three backends.

`transformers` (in process, CPU, the default here), `vllm-engine` (in process, GPU) or
`vllm-server` (OpenAI-compatible HTTP). Whichever it is, the resource serves the MLflow
`@champion` adapter of the registered model, or the base model while there is none; the
model loads on first use, once per process. Fields left unset follow the environment.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from dagster_platform.llm.client import ResiliencePolicy
from dagster_platform.llm.service import LLMConfig, LLMService, get_service
from dagster_platform.settings import get_settings
from resources.mlflow import MLflowResource


class LLMResource(dg.ConfigurableResource):
    """Which backend and model answer, and how hard to try before failing fast."""

    backend: str | None = Field(
        default=None,
        description="Overrides LLM_BACKEND: auto, transformers, vllm-server or vllm-engine.",
    )
    base_model: str | None = Field(default=None, description="Overrides BASE_MODEL.")
    vllm_base_url: str | None = Field(default=None, description="Overrides VLLM_BASE_URL.")
    registered_model: str | None = Field(
        default=None, description="Overrides REGISTERED_MODEL (whose @champion is served)."
    )
    timeout_s: float | None = Field(default=None, description="Overrides LLM_TIMEOUT_S.")
    retries: int | None = Field(default=None, description="Overrides LLM_RETRIES.")

    def config(self, mlflow: MLflowResource | None = None) -> LLMConfig:
        """The service's configuration; with `mlflow`, the champion is looked up in that
        store, the one the fine-tune assets register into."""
        settings = get_settings()
        defaults = LLMConfig.from_settings(settings)
        policy = defaults.policy
        return LLMConfig(
            backend=defaults.backend if self.backend in (None, "auto") else self.backend,
            base_model=self.base_model or defaults.base_model,
            registered_model=self.registered_model or defaults.registered_model,
            tracking_uri=mlflow.uri if mlflow is not None else defaults.tracking_uri,
            adapters_dir=defaults.adapters_dir,
            vllm_base_url=self.vllm_base_url or defaults.vllm_base_url,
            vllm_api_key=defaults.vllm_api_key,
            vllm_max_lora_rank=defaults.vllm_max_lora_rank,
            vllm_model=None if self.vllm_base_url else defaults.vllm_model,
            policy=ResiliencePolicy(
                **{
                    **policy.__dict__,
                    "timeout_s": self.timeout_s or policy.timeout_s,
                    "retries": policy.retries if self.retries is None else self.retries,
                }
            ),
        )

    def service(self, mlflow: MLflowResource | None = None) -> LLMService:
        return get_service(self.config(mlflow))
