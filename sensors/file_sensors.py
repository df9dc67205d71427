"""Re-ingest a sample source when its file changes on disk (and re-check what refers to it)."""

import json

import dagster as dg

from dagster_platform.ingestion.fingerprints import changed_sources
from resources import DataFolderResource


@dg.sensor(
    name="data_folder_changes",
    description="Materializes the ingestion assets whose files changed in the data folder; "
    "the first tick after `make run` loads everything.",
    target=dg.AssetSelection.groups("ingestion"),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def data_folder_changes(
    context: dg.SensorEvaluationContext, data_folder: DataFolderResource
) -> dg.SensorResult | dg.SkipReason:
    previous = json.loads(context.cursor) if context.cursor else {}
    changed, current = changed_sources(data_folder.path, previous)
    if not changed:
        return dg.SkipReason(f"no source changed in {data_folder.path}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                asset_selection=[dg.AssetKey(name) for name in changed],
                tags={"dagster-platform/trigger": "data-folder-change"},
            )
        ],
        cursor=json.dumps(current, sort_keys=True),
    )
