"""Dagster asset definitions, one module per group."""

import dagster as dg

from assets.ingestion import file_assets

defs = dg.Definitions(assets=[*file_assets])
