"""The state folder, and the settings the domain code reads whole, composed from resources."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from dagster_platform.settings import Settings, get_settings

if TYPE_CHECKING:
    from resources.data_folder import DataFolderResource
    from resources.kafka import KafkaResource
    from resources.knowledge import KnowledgeResource
    from resources.mlflow import MLflowResource
    from resources.ontology import OntologyResource


class StateResource(dg.ConfigurableResource):
    """The runtime state folder (DAGSTER_PLATFORM_STATE): reports, fine-tune artefacts, the
    frozen evaluation state and the pictures the assets write beside the warehouse."""

    folder: str | None = Field(default=None, description="Overrides DAGSTER_PLATFORM_STATE.")

    @property
    def path(self) -> Path:
        return Path(self.folder) if self.folder else get_settings().state_dir

    def settings(
        self,
        *,
        data_folder: DataFolderResource | None = None,
        ontology: OntologyResource | None = None,
        kafka: KafkaResource | None = None,
        mlflow: MLflowResource | None = None,
        knowledge: KnowledgeResource | None = None,
    ) -> Settings:
        """The settings for code that reads them whole (the assistant and its tools, the frozen
        evaluation state), each part taken from the resource that owns it: overriding a
        resource then changes every asset that reads that part, not only some."""
        update: dict[str, Any] = {"state_dir": self.path}
        if data_folder is not None:
            update["data_dir"] = data_folder.path
        if ontology is not None:
            update |= {"ontology_dir": ontology.path, "roles_file": ontology.roles_path}
        if kafka is not None and kafka.bootstrap_servers:
            update["kafka_bootstrap_servers"] = kafka.bootstrap_servers
        if mlflow is not None:
            update["mlflow_tracking_uri"] = mlflow.uri
        if knowledge is not None:
            update |= {"chroma_host": knowledge.host, "embedding_model": knowledge.model_name}
        return get_settings().model_copy(update=update)
