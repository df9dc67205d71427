"""Typed, versioned event schemas: JSON on the wire, validated on landing.

Every event carries `type` as `<name>.v<version>` (e.g. `host_metric.v1`): a producer that
changes a schema publishes a new version beside the old one, and consumers decode both. The
schemas are msgspec structs, which decode and validate in one pass in C and say exactly which
field is wrong, so validation costs little next to consuming.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import msgspec

Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Severity = Literal["sev1", "sev2", "sev3", "sev4"]
JobState = Literal["SUBMITTED", "ACCEPTED", "RUNNING", "FINISHED", "FAILED", "KILLED"]


class Event(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, gc=False):
    """Fields every event has: a unique id and the time it happened (RFC 3339).

    Events hold only scalars, so they can form no reference cycle: `gc=False` keeps the
    collector from tracking the hundreds of thousands a landing run decodes."""

    event_id: Identifier
    ts: datetime


class HostMetricV1(Event, tag="host_metric.v1", kw_only=True):
    """One utilisation sample of one host."""

    cluster_id: Identifier
    host_id: Identifier
    cpu_pct: Percent
    memory_pct: Percent
    disk_pct: Percent
    load_1m: NonNegative = 0.0


class SparkJobEventV1(Event, tag="spark_job.v1", kw_only=True):
    """A Spark application changed state (or reported its current resource use)."""

    application_id: Identifier
    cluster_id: Identifier
    name: str
    queue: str
    user: str
    state: JobState
    vcores: Count
    memory_gb: NonNegative
    cpu_share_pct: Percent
    driver_host: str | None = None


class AlertV1(Event, tag="alert.v1", kw_only=True):
    """A monitoring rule fired on a cluster or host."""

    alert_id: Identifier
    cluster_id: Identifier
    host_id: str | None = None
    severity: Severity
    rule: str
    metric: str
    value: float
    threshold: float
    message: str


class FeedbackV1(Event, tag="feedback.v1", kw_only=True):
    """A person rated an answer: -1 (bad), 0 (neutral) or 1 (good), and may have written the
    answer it should have been (`correction`, added later with a default, so it stays v1)."""

    feedback_id: Identifier
    interaction_id: Identifier
    rating: Annotated[int, msgspec.Meta(ge=-1, le=1)]
    comment: str | None = None
    user_id: str | None = None
    correction: str | None = None


class ActionCommandV1(Event, tag="action.v1", kw_only=True):
    """An approved operation for the watched cluster to carry out."""

    action_id: Identifier
    action: Literal["kill_spark_job"]
    cluster_id: Identifier
    target_id: Identifier
    requested_by: str
    approved_by: str


@dataclass(frozen=True)
class Reference:
    """An event column that must name an existing row elsewhere in the warehouse; events that
    name none are dead-lettered with `reason` instead of landing as orphans."""

    column: str
    table: str
    key: str
    reason: str


@dataclass(frozen=True)
class EventTable:
    """Where events of one schema land: the warehouse table and its columns, the row each
    event must refer to, if any, and the running counts (metadata name, SQL condition on the
    table's rows) that each landing reports, for sensors that must not open the warehouse."""

    event_type: type[Event]
    table: str
    reference: Reference | None = None
    running_counts: tuple[tuple[str, str], ...] = ()

    @property
    def tag(self) -> str:
        return self.event_type.__struct_config__.tag  # type: ignore[return-value]


@dataclass(frozen=True)
class StreamFamily:
    """One topic, the event schemas it carries, and the consumer group that lands it."""

    name: str
    topic: str
    tables: tuple[EventTable, ...]

    @property
    def consumer_group(self) -> str:
        return f"dagster-platform-{self.name}"

    @property
    def event_types(self) -> tuple[type[Event], ...]:
        return tuple(t.event_type for t in self.tables)


RAW_EVENTS = StreamFamily(
    "raw_events",
    "raw-data-stream",
    (EventTable(HostMetricV1, "host_metrics"), EventTable(SparkJobEventV1, "spark_job_events")),
)
ALERT_EVENTS = StreamFamily("alert_events", "ops-alerts", (EventTable(AlertV1, "alert_events"),))
FEEDBACK_EVENTS = StreamFamily(
    "feedback_events",
    "llm-feedback",
    (
        EventTable(
            FeedbackV1,
            "feedback_events",
            Reference("interaction_id", "interactions", "interaction_id", "unknown_interaction"),
            # what the fine-tuning loop can learn from: an up vote or a correction
            running_counts=(
                ("usable_feedback_total", "rating = 1 OR coalesce(trim(correction), '') <> ''"),
            ),
        ),
    ),
)
STREAM_FAMILIES: tuple[StreamFamily, ...] = (RAW_EVENTS, ALERT_EVENTS, FEEDBACK_EVENTS)

ACTIONS_TOPIC = "ops-actions"


def encode(event: Event) -> bytes:
    return msgspec.json.encode(event)
