"""Markdown that people read in the Dagster UI: table previews and inline images."""

from __future__ import annotations

import base64

import polars as pl


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
