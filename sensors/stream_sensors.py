"""One sensor per topic family: land new messages as soon as Kafka says they are there.

A tick asks Kafka alone (high watermarks against the offsets the landing runs committed to the
consumer group) and never opens DuckDB. It requests a run when there is a backlog and none is
queued or in flight for that family. Requests carry no run key — Dagster keeps run keys for
ever, and a key repeated after a failed run would be dropped silently — so a failed run's range
is simply picked up by the next request, from where the warehouse says it stopped.
"""

import json
import time

import dagster as dg

from dagster_platform.kafka.backlog import backlog
from dagster_platform.kafka.events import STREAM_FAMILIES, StreamFamily
from dagster_platform.kafka.topics import KafkaUnavailable
from resources import KafkaResource

STREAM_TAG = "dagster-platform/stream"
BASE_INTERVAL_SECONDS = 1
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def build_stream_sensor(family: StreamFamily) -> dg.SensorDefinition:
    keys = [dg.AssetKey(t.table) for t in family.tables]

    @dg.sensor(
        name=f"{family.name}_backlog",
        description=f"Requests a landing run of `{family.topic}` when it has unlanded messages. "
        "Interval: DAGSTER_PLATFORM_STREAM_SENSOR_INTERVAL seconds (default 5).",
        target=dg.AssetSelection.assets(*keys),
        minimum_interval_seconds=BASE_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, kafka: KafkaResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        interval = kafka.sensor_interval
        if now - cursor.get("checked_at", 0.0) < interval:
            return dg.SkipReason(f"next check of {family.topic} in under {interval:.0f}s")
        cursor["checked_at"] = now
        runs = context.instance.get_runs(
            filters=dg.RunsFilter(tags={STREAM_TAG: family.name}, statuses=IN_FLIGHT), limit=1
        )
        if runs:
            return dg.SensorResult(
                skip_reason=f"run {runs[0].run_id} for {family.topic} is "
                f"{runs[0].status.value.lower()}; not starting the same work twice",
                cursor=json.dumps(cursor),
            )
        try:
            waiting = backlog(kafka.servers, family, timeout=kafka.timeout_seconds / 2)
        except KafkaUnavailable as exc:
            return dg.SensorResult(
                skip_reason=f"broker unreachable, will retry: {exc}", cursor=json.dumps(cursor)
            )
        if waiting.waiting == 0:
            return dg.SensorResult(
                skip_reason=f"no backlog ({waiting.describe()})", cursor=json.dumps(cursor)
            )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    asset_selection=keys,
                    tags={
                        STREAM_TAG: family.name,
                        "dagster-platform/backlog": str(waiting.waiting),
                    },
                )
            ],
            cursor=json.dumps(cursor),
        )

    return _sensor


stream_sensors = [build_stream_sensor(family) for family in STREAM_FAMILIES]

rollup_automation = dg.AutomationConditionSensorDefinition(
    "rollup_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Evaluates the automation conditions (rollups follow new landed rows).",
)
