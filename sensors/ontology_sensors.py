"""Re-validate and re-version the ontology when its YAML changes on disk."""

import dagster as dg

from dagster_platform.ontology.loader import folder_fingerprint
from resources import OntologyResource


@dg.sensor(
    name="ontology_changes",
    description="Materializes ontology_schema when the ontology YAML changes (and on the first "
    "tick); objects, links and the graph follow by declarative automation.",
    target=dg.AssetSelection.assets("ontology_schema"),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def ontology_changes(
    context: dg.SensorEvaluationContext, ontology: OntologyResource
) -> dg.SensorResult | dg.SkipReason:
    current = folder_fingerprint(ontology.path)
    if current is None:
        return dg.SkipReason(f"no ontology YAML in {ontology.path}")
    if current == context.cursor:
        return dg.SkipReason(f"the ontology in {ontology.path} has not changed")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                asset_selection=[dg.AssetKey("ontology_schema")],
                tags={"dagster-platform/trigger": "ontology-change"},
            )
        ],
        cursor=current,
    )
