"""Strict readers: every source becomes a frame of raw strings plus the location of each row.

Values stay text here so that a wrong type is a failing row reported by the type suite, not a
parse crash; anything that is not a table at all (missing, empty, not UTF-8, broken CSV or
JSON) raises :class:`SourceError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dagster_platform.ingestion.documents import DocumentRejected
from dagster_platform.ingestion.runbooks import read_runbook, runbook_paths
from dagster_platform.ingestion.sources import SourceSpec

LOCATION = "_location"


class SourceError(ValueError):
    """The source file cannot be read as a table; the message names the file and the line."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class RawTable:
    spec: SourceSpec
    path: Path
    frame: pl.DataFrame  # every column of the file, as strings, + LOCATION


def read_source(spec: SourceSpec, data_dir: Path) -> RawTable:
    path = data_dir / spec.path
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "markdown": _read_markdown}[spec.format]
    return RawTable(spec, path, reader(path))


def _read_text(path: Path) -> str:
    if not path.exists():
        raise SourceError(path, "file not found")
    if not path.is_file():
        raise SourceError(path, "is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise SourceError(path, "file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(
            path, f"not valid UTF-8 at line {line} (byte {exc.start}: {exc.reason})"
        ) from exc


def _ragged_line(text: str) -> str:
    """Find the first CSV record whose field count differs from the header's."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    for record in reader:
        if record and len(record) != len(header):
            return f"line {reader.line_num} has {len(record)} fields, the header has {len(header)}"
    return "malformed CSV"


def _read_csv(path: Path) -> pl.DataFrame:
    text = _read_text(path)
    header = next(csv.reader(io.StringIO(text)), [])
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise SourceError(path, f"line 1: duplicate column names {duplicates}")
    try:
        frame = pl.read_csv(io.StringIO(text), infer_schema=False)
    except pl.exceptions.NoDataError as exc:
        raise SourceError(path, "file has no header row") from exc
    except pl.exceptions.ComputeError as exc:
        raise SourceError(path, f"not valid CSV: {_ragged_line(text)}") from exc
    # line numbers: the header is line 1; records with embedded newlines are rare in our files
    return frame.with_columns(
        (pl.lit(f"{path.name} line ") + (pl.int_range(pl.len()) + 2).cast(pl.String)).alias(
            LOCATION
        )
    )


def _as_text(value: Any) -> str | None:
    """JSON scalars as the text the type suite checks; lists as canonical JSON arrays."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _rows_to_frame(rows: list[dict[str, Any]], locations: list[str]) -> pl.DataFrame:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    data = {c: [_as_text(r.get(c)) for r in rows] for c in columns}
    data[LOCATION] = locations
    return pl.DataFrame(data, schema={c: pl.String for c in data})


def _read_jsonl(path: Path) -> pl.DataFrame:
    text = _read_text(path)
    rows, locations = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(path, f"line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise SourceError(path, f"line {number} is not a JSON object")
        rows.append(row)
        locations.append(f"{path.name} line {number}")
    return _rows_to_frame(rows, locations)


def _read_markdown(folder: Path) -> pl.DataFrame:
    """One row per runbook, read by the one runbook reader; the first file it refuses fails
    the source, naming the file."""
    if not folder.is_dir():
        raise SourceError(folder, "folder not found")
    files = runbook_paths(folder)
    if not files:
        raise SourceError(folder, "folder has no .md files")
    rows = []
    for path in files:
        try:
            runbook = read_runbook(path)
        except DocumentRejected as exc:
            raise SourceError(path, exc.detail) from exc
        meta = {k: v for k, v in runbook.meta.items() if k not in ("id", "title")}
        rows.append(
            {
                "runbook_id": runbook.doc_id,
                "title": runbook.title,
                **meta,
                "body": runbook.body.strip() or None,
                "file": path.name,
            }
        )
    return _rows_to_frame(rows, [f"{folder.name}/{p.name}" for p in files])
