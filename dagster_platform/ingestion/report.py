"""Failing rows of a file check, as Markdown for the check's metadata."""

from __future__ import annotations

import polars as pl

from dagster_platform.ingestion.readers import LOCATION
from dagster_platform.ingestion.validation import CheckOutcome
from dagster_platform.lib.markdown import markdown_table

FAILING_ROWS_LIMIT = 50


def failures_markdown(outcome: CheckOutcome, limit: int = FAILING_ROWS_LIMIT) -> str:
    """The problems, then up to `limit` failing rows: where, which column, the value, the rule."""
    lines = [f"- {problem}" for problem in outcome.problems]
    if outcome.rows:
        shown = pl.DataFrame(
            [
                {"row": r.location, "column": r.column, "value": r.value, "rule": r.rule}
                for r in outcome.rows[:limit]
            ]
        )
        if lines:
            lines.append("")
        lines.append(markdown_table(shown, width=80))
        if len(outcome.rows) > limit:
            lines.append(f"\n… and {len(outcome.rows) - limit} more failing values")
    return "\n".join(lines)


def failing_records_markdown(
    raw: pl.DataFrame, outcome: CheckOutcome, limit: int = FAILING_ROWS_LIMIT
) -> str:
    """The whole source records behind the failures, as they were read, up to `limit`."""
    locations = outcome.failing_locations[:limit]
    records = raw.filter(pl.col(LOCATION).is_in(locations))
    return markdown_table(records.select(LOCATION, pl.exclude(LOCATION)), width=40)
