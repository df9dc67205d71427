"""Markdown that people read in the Dagster UI: table previews and failing rows."""

from __future__ import annotations

import base64

import polars as pl

from dagster_platform.ingestion.readers import LOCATION
from dagster_platform.ingestion.validation import CheckOutcome

FAILING_ROWS_LIMIT = 50


def _cell(value: object, width: int) -> str:
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    text = "" if value is None else str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(frame: pl.DataFrame, width: int = 60) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v, width) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])


def png_markdown(alt: str, png: bytes) -> str:
    """An image inline in Markdown metadata: the Dagster UI shows it without a file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def preview_markdown(frame: pl.DataFrame, rows: int = 10) -> str:
    return markdown_table(frame.head(rows))


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
