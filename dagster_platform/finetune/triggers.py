"""When the loop should run again: enough usable feedback landed since the last dataset.

Usable feedback is a positive rating or a correction: what `sft_dataset` can learn from. The
landing of `feedback_events` and each dataset record the running total in their
materialization metadata, so the sensor decides from Dagster's event log and never opens the
warehouse (a sensor tick must not wait for the file lock of a landing run).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.kafka.tables import running_counts

USABLE_FEEDBACK_TOTAL = "usable_feedback_total"  # declared on the feedback_events table


def usable_feedback_total(conn: duckdb.DuckDBPyConnection) -> int:
    """Landed feedback rows that rate an answer up or correct it (0 before any landed)."""
    return running_counts(conn, FEEDBACK_EVENTS.tables[0])[USABLE_FEEDBACK_TOTAL]


@dataclass(frozen=True)
class FeedbackBacklog:
    """Usable feedback landed in all, and how much of it the latest dataset had seen."""

    landed: int
    in_latest_dataset: int | None  # None: no dataset was ever built

    @property
    def new(self) -> int:
        return max(self.landed - (self.in_latest_dataset or 0), 0)

    def due(self, threshold: int) -> bool:
        return self.new >= threshold

    def describe(self, threshold: int) -> str:
        return (
            f"{self.new} new usable feedback since the last dataset "
            f"({self.landed} landed in all; threshold {threshold})"
        )
