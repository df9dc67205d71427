"""Reading a Dagster execution result: what materialized, check evaluations, metadata."""

from __future__ import annotations

import dagster as dg


def materialized(result) -> set[str]:
    return {
        e.asset_key.path[-1]
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def metadata(result, asset: str) -> dict:
    (event,) = [
        e
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.path[-1] == asset
    ]
    return event.event_specific_data.materialization.metadata
