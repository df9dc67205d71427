"""Dagster asset definitions, one module per group (ingestion spans files and streams)."""

import dagster as dg

from assets.agents import agent_assets
from assets.finetune import finetune_assets
from assets.ingestion import file_assets
from assets.knowledge import knowledge_assets
from assets.ontology import ontology_assets
from assets.streaming import dead_letter_events, landing_assets, rollup_assets
from dagster_platform.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    """Every asset. The ontology's lineage and the GPU step tags come from `settings`, read
    when the definitions load; what an asset reads at run time comes from its resources."""
    return dg.Definitions(
        assets=[
            *file_assets,
            *landing_assets,
            dead_letter_events,
            *rollup_assets,
            *ontology_assets(settings),
            *knowledge_assets,
            *agent_assets,
            *finetune_assets(settings),
        ]
    )
