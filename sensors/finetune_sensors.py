"""What starts the loop: enough new usable feedback, or the nightly schedule (03:00, the
seed's time).

Both read the running totals of usable feedback from the materialization metadata of
`feedback_events` and `sft_dataset` (never the warehouse), and neither starts a loop while
another is queued or running.
"""

from __future__ import annotations

import dagster as dg

from assets.finetune import FINETUNE_TAG, GROUP
from dagster_platform.finetune.triggers import USABLE_FEEDBACK_TOTAL, FeedbackBacklog
from dagster_platform.settings import Settings
from resources import FinetuneResource
from sensors.stream_sensors import IN_FLIGHT

finetune_job = dg.define_asset_job(
    "finetune_job",
    selection=dg.AssetSelection.groups(GROUP),
    tags={FINETUNE_TAG: "loop"},
    description="Dataset, adapter, evaluation and promotion, in order.",
)


def _latest_total(instance: dg.DagsterInstance, asset: str) -> int | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(USABLE_FEEDBACK_TOTAL)
    return None if value is None else int(value.value)


def feedback_backlog(instance: dg.DagsterInstance) -> FeedbackBacklog:
    return FeedbackBacklog(
        landed=_latest_total(instance, "feedback_events") or 0,
        in_latest_dataset=_latest_total(instance, "sft_dataset"),
    )


def _loop_in_flight(instance: dg.DagsterInstance) -> str | None:
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={FINETUNE_TAG: "loop"}, statuses=IN_FLIGHT), limit=1
    )
    return runs[0].run_id if runs else None


@dg.sensor(
    job=finetune_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests the fine-tune loop once DAGSTER_PLATFORM_FINETUNE_THRESHOLD new "
    "positive ratings or corrections have landed since the last dataset.",
)
def new_feedback(
    context: dg.SensorEvaluationContext, finetune: FinetuneResource
) -> dg.SensorResult | dg.SkipReason:
    threshold = finetune.threshold
    backlog = feedback_backlog(context.instance)
    if not backlog.due(threshold):
        return dg.SkipReason(backlog.describe(threshold))
    if str(backlog.landed) == context.cursor:
        return dg.SkipReason(f"a loop was already requested at {backlog.landed} landed")
    running = _loop_in_flight(context.instance)
    if running:
        return dg.SkipReason(f"loop {running} is in flight; {backlog.describe(threshold)}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(tags={"reason": backlog.describe(threshold)})],
        cursor=str(backlog.landed),
    )


def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    backlog = feedback_backlog(context.instance)
    if backlog.in_latest_dataset is not None and backlog.new == 0:
        return dg.SkipReason("no new usable feedback since the last dataset")
    running = _loop_in_flight(context.instance)
    if running:
        return dg.SkipReason(f"loop {running} is in flight")
    return dg.RunRequest(tags={"reason": f"nightly; {backlog.describe(0)}"})


def nightly_finetune(settings: Settings) -> dg.ScheduleDefinition:
    """The nightly loop on the configured cron and timezone, read when the definitions load."""
    return dg.ScheduleDefinition(
        name="nightly_finetune",
        job=finetune_job,
        cron_schedule=settings.finetune_cron,
        execution_timezone=settings.finetune_timezone,
        execution_fn=_nightly,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every night (03:00 by default): the loop, if usable feedback came in "
        "since the last dataset.",
    )
