"""One ConfigurableResource per external system, all connecting late."""

import dagster as dg

from resources.data_folder import DataFolderResource
from resources.finetune import FinetuneResource
from resources.kafka import KafkaResource
from resources.knowledge import VECTOR_STORE_POOL, KnowledgeResource
from resources.llm import LLMResource
from resources.mlflow import MLflowResource
from resources.ontology import OntologyResource
from resources.state import StateResource
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource

__all__ = [
    "VECTOR_STORE_POOL",
    "WAREHOUSE_POOL",
    "DataFolderResource",
    "FinetuneResource",
    "KafkaResource",
    "KnowledgeResource",
    "LLMResource",
    "MLflowResource",
    "OntologyResource",
    "StateResource",
    "WarehouseResource",
    "defs",
]

defs = dg.Definitions(
    resources={
        "warehouse": WarehouseResource(),
        "data_folder": DataFolderResource(),
        "kafka": KafkaResource(),
        "ontology": OntologyResource(),
        "knowledge": KnowledgeResource(),
        "llm": LLMResource(),
        "finetune": FinetuneResource(),
        "mlflow": MLflowResource(),
        "state": StateResource(),
    }
)
