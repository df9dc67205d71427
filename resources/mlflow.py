"""Where runs are tracked and adapters registered: one MLflow store for every asset."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_platform.llm.registry import AdapterRegistry
from dagster_platform.settings import get_settings


class MLflowResource(dg.ConfigurableResource):
    """The tracking store (MLFLOW_TRACKING_URI, default SQLite in the state folder) and where
    a local store keeps its artifacts. Which registered model adapters become versions of is
    the LLM's (`LLMResource`), since it serves that model's @champion."""

    tracking_uri: str | None = Field(default=None, description="Overrides MLFLOW_TRACKING_URI.")
    artifact_root: str | None = Field(
        default=None, description="Artifacts of new experiments; default mlartifacts/ in state."
    )

    @property
    def uri(self) -> str:
        return self.tracking_uri or get_settings().resolved_mlflow_tracking_uri

    @property
    def artifacts(self) -> Path:
        if self.artifact_root:
            return Path(self.artifact_root)
        return get_settings().state_dir / "mlartifacts"

    def registry(self, registered_model: str) -> AdapterRegistry:
        return AdapterRegistry(self.uri, registered_model)
