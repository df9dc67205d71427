"""Runbook files: one reader and one rule set for the `runbooks` table, the knowledge base and
the fine-tuning pairs, so a file one of them accepts the others accept too.

A runbook is a Markdown text document (`ingestion/documents.py`: UTF-8 or CP949, not binary,
not empty, bounded) with an optional YAML front matter; when present it must close and be a
mapping. Its id is the file's stem: a front-matter `id`, when given, must equal it, since
incidents and golden questions refer to runbooks by that id and the warehouse, the knowledge
base and the dataset must all agree on it. Its title is the front matter's `title`, else its
first `# ` heading, else the id. What a rejection costs is each reader's call: the warehouse
refuses the whole source (its checks block), the knowledge base and the dataset skip the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_platform.ingestion.documents import (
    MAX_BYTES,
    DocumentRejected,
    read_text,
    scan_lines,
    split_front_matter,
)


@dataclass(frozen=True)
class Runbook:
    doc_id: str
    title: str
    meta: dict[str, Any]  # the front matter, `{}` without one
    body: str  # the Markdown after the front matter


def _text(value: Any) -> str | None:
    return str(value).strip() if isinstance(value, str | int) and str(value).strip() else None


def runbook_paths(folder: Path) -> list[Path]:
    """The `*.md` files of a runbook folder, in name order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"runbook folder not found: {folder}")
    return sorted(p for p in folder.glob("*.md") if p.is_file())


def read_runbook(path: Path, max_bytes: int = MAX_BYTES) -> Runbook:
    """The runbook in `path`, or `DocumentRejected` saying why it is not one."""
    meta, body = split_front_matter(read_text(path, max_bytes))
    declared = _text(meta.get("id"))
    if declared is not None and declared != path.stem:
        raise DocumentRejected(
            "invalid", f"front matter id {declared!r} is not the file name's {path.stem!r}"
        )
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    heading = next((text for kind, text in scan_lines(lines) if kind == 1 and text), None)
    title = _text(meta.get("title")) or heading or path.stem
    return Runbook(path.stem, title, meta, body)
