"""Where runs are tracked and adapters registered: one MLflow store for every asset."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_platform.llm.registry import AdapterRegistry
from dagster_platform.settings import get_settings


class MLflowResource(dg.ConfigurableResource):
    """The tracking store (MLFLOW_TRACKING_URI, default SQLite in the state folder), where a
    local store keeps its artifacts, and the registered model adapters become versions of."""

    tracking_uri: str | None = Field(default=None, description="Overrides MLFLOW_TRACKING_URI.")
    artifact_root: str | None = Field(
        default=None, description="Artifacts of new experiments; default mlartifacts/ in state."
    )
    registered_model: str | None = Field(default=None, description="Overrides REGISTERED_MODEL.")

    @property
    def uri(self) -> str:
        return self.tracking_uri or get_settings().resolved_mlflow_tracking_uri

    @property
    def artifacts(self) -> Path:
        if self.artifact_root:
            return Path(self.artifact_root)
        return get_settings().state_dir / "mlartifacts"

    @property
    def model_name(self) -> str:
        return self.registered_model or get_settings().registered_model

    def registry(self) -> AdapterRegistry:
        return AdapterRegistry(self.uri, self.model_name)
