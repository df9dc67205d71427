"""Where the ontology is declared: the YAML folder and the roles file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_platform.ontology.loader import LoadedOntology, load_ontology
from dagster_platform.settings import get_settings


class OntologyResource(dg.ConfigurableResource):
    """The ontology folder (DAGSTER_PLATFORM_ONTOLOGY, default data/ontology) and the roles
    file (DAGSTER_PLATFORM_ROLES, default data/roles.yaml)."""

    folder: str | None = Field(default=None, description="Overrides DAGSTER_PLATFORM_ONTOLOGY.")
    roles: str | None = Field(default=None, description="Overrides DAGSTER_PLATFORM_ROLES.")

    @property
    def path(self) -> Path:
        return Path(self.folder) if self.folder else get_settings().ontology_dir

    @property
    def roles_path(self) -> Path:
        return Path(self.roles) if self.roles else get_settings().roles_file

    def load(self) -> LoadedOntology:
        return load_ontology(self.path)
