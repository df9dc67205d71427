"""Where the file ingestion assets read their inputs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_platform.settings import get_settings


class DataFolderResource(dg.ConfigurableResource):
    """The input data folder: DAGSTER_PLATFORM_DATA, default data/sample of the checkout."""

    folder: str | None = Field(default=None, description="Overrides DAGSTER_PLATFORM_DATA.")

    @property
    def path(self) -> Path:
        return Path(self.folder) if self.folder else get_settings().data_dir
