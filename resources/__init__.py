"""One ConfigurableResource per external system, all connecting late."""

import dagster as dg

from resources.data_folder import DataFolderResource
from resources.kafka import KafkaResource
from resources.ontology import OntologyResource
from resources.warehouse import WAREHOUSE_POOL, WarehouseResource

__all__ = [
    "WAREHOUSE_POOL",
    "DataFolderResource",
    "KafkaResource",
    "OntologyResource",
    "WarehouseResource",
    "defs",
]

defs = dg.Definitions(
    resources={
        "warehouse": WarehouseResource(),
        "data_folder": DataFolderResource(),
        "kafka": KafkaResource(),
        "ontology": OntologyResource(),
    }
)
