"""One sensor per topic family: land new messages as soon as Kafka says they are there.

A tick first asks Kafka alone (high watermarks against the offsets the landings committed to
the consumer group), so a tick with nothing new never opens DuckDB. With a backlog, the sensor
lands one bounded batch itself, refreshes the rollups fed by it and reports the
materializations of the tables, the rollups and the dead letters, and the `nothing_dropped`
check, as runless events (`SensorResult.asset_events`): they show in each asset's history and
drive the automation of what follows, and the steady state costs no Dagster run at all. A tick
that fails is a failed tick in the UI, and the next tick lands the same range again from where
the warehouse says it stopped; a warehouse that another writer holds longer than
DAGSTER_PLATFORM_STREAM_WAREHOUSE_WAIT leaves the batch to the next tick, saying so.

With DAGSTER_PLATFORM_STREAM_LANDING=run the sensor requests a landing run instead (tables,
rollups and dead letters in one run), when none is queued or in flight for that family.
Requests carry no run key — Dagster keeps run keys for ever, and a key repeated after a failed
run would be dropped silently — so a failed run's range is picked up by the next request.
`dagster-platform bench streaming` measures the two side by side.
"""

import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import dagster as dg
import duckdb

from assets.streaming import LandedBatch, land_batch, rollups_of
from dagster_platform.kafka.backlog import backlog
from dagster_platform.kafka.events import STREAM_FAMILIES, StreamFamily
from dagster_platform.kafka.tables import DEAD_LETTER_TABLE
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.settings import Settings, get_settings
from resources import KafkaResource, WarehouseResource

STREAM_TAG = "dagster-platform/stream"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def landed_by(family: StreamFamily) -> list[dg.AssetKey]:
    """What one landing of `family` materializes: its tables, their rollups, the dead letters."""
    names = [
        *(t.table for t in family.tables),
        *(spec.name for spec in rollups_of(family)),
        DEAD_LETTER_TABLE,
    ]
    return [dg.AssetKey(name) for name in names]


def build_stream_sensor(family: StreamFamily, interval_seconds: float) -> dg.SensorDefinition:
    keys = landed_by(family)

    @dg.sensor(
        name=f"{family.name}_backlog",
        description=f"Lands `{family.topic}` when it has unlanded messages and reports the "
        "materializations (or requests a landing run: DAGSTER_PLATFORM_STREAM_LANDING=run). "
        "Interval: DAGSTER_PLATFORM_STREAM_SENSOR_INTERVAL seconds (default 5).",
        target=dg.AssetSelection.assets(*keys),
        minimum_interval_seconds=max(1, round(interval_seconds)),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, kafka: KafkaResource, warehouse: WarehouseResource
    ) -> dg.SensorResult | dg.SkipReason:
        runs = context.instance.get_runs(
            filters=dg.RunsFilter(tags={STREAM_TAG: family.name}, statuses=IN_FLIGHT), limit=1
        )
        if runs:
            return dg.SkipReason(
                f"run {runs[0].run_id} for {family.topic} is {runs[0].status.value.lower()}; "
                "not starting the same work twice"
            )
        try:
            waiting = backlog(kafka.servers, family, timeout=kafka.timeout_seconds / 2)
        except KafkaUnavailable as exc:
            return dg.SkipReason(f"broker unreachable, will retry: {exc}")
        if waiting.waiting == 0:
            return dg.SkipReason(f"no backlog ({waiting.describe()})")
        if get_settings().stream_landing == "run":
            return dg.SensorResult(
                run_requests=[
                    dg.RunRequest(
                        asset_selection=keys,
                        tags={
                            STREAM_TAG: family.name,
                            "dagster-platform/backlog": str(waiting.waiting),
                        },
                    )
                ]
            )
        return _land_here(context, family, kafka, warehouse)

    return _sensor


_landing_here: dict[str, threading.Lock] = {f.name: threading.Lock() for f in STREAM_FAMILIES}


def _land_here(
    context: dg.SensorEvaluationContext,
    family: StreamFamily,
    kafka: KafkaResource,
    warehouse: WarehouseResource,
) -> dg.SensorResult | dg.SkipReason:
    """Land one batch in this process, unless an evaluation of the same sensor still is: a
    tick past the sensor timeout goes on in the code server, and the next tick waiting for it
    would time out in turn."""
    lock = _landing_here[family.name]
    if not lock.acquire(blocking=False):
        return dg.SkipReason(
            f"an earlier tick is still landing {family.topic} in this code server; "
            "this one leaves it to finish"
        )
    try:
        return _land_batch_here(context, family, kafka, warehouse)
    finally:
        lock.release()


def _land_batch_here(
    context: dg.SensorEvaluationContext,
    family: StreamFamily,
    kafka: KafkaResource,
    warehouse: WarehouseResource,
) -> dg.SensorResult | dg.SkipReason:
    """The warehouse through this process's one connection owner (the family sensors
    evaluated at once take turns), waiting a bounded time for another process's writer, so
    that the tick ends inside the sensor timeout."""
    wait = get_settings().stream_warehouse_wait
    connect = _within(Path(warehouse.path), time.monotonic() + wait)
    try:
        batch = land_batch(
            connect, kafka, family, follow=True, max_messages=kafka.max_messages_per_tick
        )
    except dg.Failure as exc:  # the broker went away after the backlog check
        return dg.SkipReason(f"broker unreachable, will retry: {exc.description}")
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        return dg.SkipReason(
            f"the warehouse is held by another writer for over {wait:.0f}s; {family.topic} "
            "lands on the next tick, from where the warehouse stopped"
        )
    context.log.info(batch.describe())
    return dg.SensorResult(
        skip_reason=_summary(batch),
        asset_events=[*batch.materializations(), *_evaluation(batch)],
    )


def _within(path: Path, deadline: float):
    """Connections of one tick that wait for another process's writer until `deadline` in
    all: a landing opens the warehouse three times (offsets, the writer, the metadata), and
    waits that added up ran a tick past the sensor timeout, which drops what it reports."""

    def connect() -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return open_warehouse(path, wait_seconds=max(deadline - time.monotonic(), 2.0))

    return connect


def _summary(batch: LandedBatch) -> str:
    """The tick's line in the sensor's history: a tick with no run shows as skipped."""
    if batch.overtaken:
        return batch.describe()
    follow = [name for name in batch.metadata if name not in {t.table for t in batch.family.tables}]
    also = f"; refreshed {', '.join(follow)}" if follow else ""
    return f"landed here, no run: {batch.describe()}{also}"


def _evaluation(batch: LandedBatch) -> list[dg.AssetCheckEvaluation]:
    check = batch.check()
    if check is None:
        return []
    return [
        dg.AssetCheckEvaluation(
            asset_key=check.asset_key,
            check_name=check.check_name,
            passed=check.passed,
            metadata=check.metadata,
        )
    ]


def build_stream_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    """One per topic family, evaluated every DAGSTER_PLATFORM_STREAM_SENSOR_INTERVAL seconds:
    the daemon's own interval, so that a tick between checks costs nothing at all."""
    return [build_stream_sensor(f, settings.stream_sensor_interval) for f in STREAM_FAMILIES]


declarative_automation = dg.AutomationConditionSensorDefinition(
    "declarative_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Evaluates the automation conditions: the ontology and knowledge base follow "
    "their inputs (tables fed by Kafka on the ontology's cron).",
)
