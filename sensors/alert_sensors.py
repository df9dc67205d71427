"""One incident report per alert: the `new_alerts` sensor follows `ops-alerts` in Kafka
(never the warehouse), adds a dynamic partition per alert id and requests its report.

A report needs the ontology and the knowledge base; on a fresh state the simulator's first
alert can come before they exist, so until they have been materialized the sensor skips,
saying so, and leaves the alerts in Kafka (uncommitted) for its next tick."""

import dagster as dg

from assets.agents import ALERT_PARTITIONS
from dagster_platform.kafka.alert_follower import AlertFollower
from dagster_platform.kafka.topics import KafkaUnavailable
from resources import KafkaResource

REPORT_INPUTS = [
    dg.AssetKey(name) for name in ("ontology_objects", "ontology_links", "document_chunks")
]

incident_reports_job = dg.define_asset_job(
    "incident_reports_job", selection=["incident_reports"], partitions_def=ALERT_PARTITIONS
)


@dg.sensor(
    job=incident_reports_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an `alerts` partition per new alert on ops-alerts and requests its "
    "root-cause report (each alert once: the run key is the alert id).",
)
def new_alerts(
    context: dg.SensorEvaluationContext, kafka: KafkaResource
) -> dg.SensorResult | dg.SkipReason:
    missing = [
        key.to_user_string()
        for key in REPORT_INPUTS
        if context.instance.get_latest_materialization_event(key) is None
    ]
    if missing:
        return dg.SkipReason(
            f"waiting for {', '.join(missing)} to be materialized: a report needs the "
            "ontology and the knowledge base (new alerts stay in Kafka until then)"
        )
    follower = AlertFollower(kafka.servers)
    try:
        try:
            alerts = follower.poll()
        except KafkaUnavailable as exc:
            return dg.SkipReason(f"broker unreachable: {exc}")
        ids = list(dict.fromkeys(a.alert_id for a in alerts))
        known = set(context.instance.get_dynamic_partitions(ALERT_PARTITIONS.name))
        new = [alert_id for alert_id in ids if alert_id not in known]
        follower.commit()
    finally:
        follower.close()
    if not ids:
        return dg.SkipReason("no new alerts")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"incident-report:{alert_id}", partition_key=alert_id)
            for alert_id in new
        ],
        dynamic_partitions_requests=[ALERT_PARTITIONS.build_add_request(new)] if new else [],
    )
