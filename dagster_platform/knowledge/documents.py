"""The knowledge corpus as chunks for embedding and BM25: runbooks, past incidents and the
generated descriptions of ontology objects.

A chunk id comes from its document id, the heading path of its section and its ordinal in the
section — never from its text — so an edit re-embeds only the chunks it touched, and a chunk
that disappears is one whose section did. Every chunk text starts with its heading breadcrumb
("Doc title > Section > Subsection"), because a section read alone ("3. Restart it") is
ambiguous without it, and is bounded by `max_chars` so no embedding input is silently cut.

A document that cannot be read becomes a `Rejected` with its reason instead of failing the
whole build: one bad runbook must not keep the other fifteen out of the knowledge base.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from dagster_platform.ingestion.documents import (
    CODE,
    MAX_BYTES,
    DocumentRejected,
    decode_bytes,
    scan_lines,
)
from dagster_platform.ingestion.documents import Reason as DocumentReason
from dagster_platform.ingestion.runbooks import read_runbook, runbook_paths
from dagster_platform.lib.warehouse import quote, table_exists
from dagster_platform.ontology.build import OBJECTS_TABLE

Source = Literal["runbook", "incident", "object"]
Reason = Literal[DocumentReason, "duplicate"]  # a duplicate is readable, but a copy

CHUNKS_TABLE = "document_chunks"
REJECTIONS_TABLE = "document_rejections"
MAX_CHARS = 1200
# An incident is read as one story (symptoms, then root cause, then resolution), so it gets a
# larger bound than a runbook section and is split only when it is pathologically long.
MAX_INCIDENT_CHARS = 2 * MAX_CHARS


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    source: Source
    object_type: str
    object_key: str | None
    cluster_id: str | None
    title: str
    heading: str
    text: str
    content_hash: str


@dataclass(frozen=True)
class Rejected:
    doc_id: str
    source: Source
    reason: Reason
    detail: str


@dataclass
class ChunkSet:
    chunks: list[Chunk] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @classmethod
    def merge(cls, *sets: ChunkSet) -> ChunkSet:
        return cls(
            [c for s in sets for c in s.chunks],
            [r for s in sets for r in s.rejected],
        )


def _chunk_id(doc_id: str, path: tuple[str, ...], occurrence: int, ordinal: int) -> str:
    """`doc#ordinal` for the text before any heading, else `doc#<hash of the heading path>.n`;
    a repeated heading path is told apart by its occurrence."""
    if not path and not occurrence:
        return f"{doc_id}#{ordinal}"
    key = "\x1f".join(path) + (f"\x1e{occurrence}" if occurrence else "")
    return f"{doc_id}#{hashlib.sha256(key.encode()).hexdigest()[:10]}.{ordinal}"


def _split_long(paragraph: str, budget: int) -> Iterator[str]:
    """Pieces of at most `budget` characters: whole lines where they fit, else cut at the last
    space of the window, else hard."""
    current: list[str] = []
    size = 0
    for line in paragraph.split("\n"):
        if current and size + 1 + len(line) > budget:
            yield "\n".join(current)
            current, size = [], 0
        while len(line) > budget:
            cut = line.rfind(" ", 0, budget + 1)
            cut = cut if cut > budget // 2 else budget
            yield line[:cut].rstrip()
            line = line[cut:].lstrip()
        if line or current:
            current.append(line)
            size += len(line) + (1 if size else 0)
    if current:
        yield "\n".join(current)


def _pack(paragraphs: Iterable[str], budget: int) -> list[str]:
    """Consecutive paragraphs joined into bodies of at most `budget` characters."""
    bodies: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        pieces = [paragraph] if len(paragraph) <= budget else _split_long(paragraph, budget)
        for piece in pieces:
            if not piece.strip():
                continue
            if current and size + 2 + len(piece) > budget:
                bodies.append("\n\n".join(current))
                current, size = [], 0
            current.append(piece)
            size += len(piece) + (2 if size else 0)
    if current:
        bodies.append("\n\n".join(current))
    return bodies


@dataclass(frozen=True)
class _Doc:
    """What every chunk of one document shares."""

    doc_id: str
    source: Source
    object_type: str
    object_key: str | None
    cluster_id: str | None
    title: str


def _section_chunks(
    doc: _Doc, sections: Iterable[tuple[tuple[str, ...], list[str]]], max_chars: int
) -> list[Chunk]:
    """Chunks of (heading path below the title, paragraphs) sections, each text at most
    `max_chars` characters."""
    if max_chars < 64:
        raise ValueError(f"max_chars must be at least 64, got {max_chars}")
    chunks: list[Chunk] = []
    seen: dict[tuple[str, ...], int] = {}
    for path, paragraphs in sections:
        occurrence = seen.get(path, 0)
        seen[path] = occurrence + 1
        heading = " > ".join((doc.title, *path))
        if len(heading) > max_chars // 3:  # a pathological heading must not crowd out the body
            heading = heading[: max_chars // 3 - 1] + "…"
        for ordinal, body in enumerate(_pack(paragraphs, max_chars - len(heading) - 2)):
            text = f"{heading}\n\n{body}"
            chunks.append(
                Chunk(
                    chunk_id=_chunk_id(doc.doc_id, path, occurrence, ordinal),
                    doc_id=doc.doc_id,
                    source=doc.source,
                    object_type=doc.object_type,
                    object_key=doc.object_key,
                    cluster_id=doc.cluster_id,
                    title=doc.title,
                    heading=heading,
                    text=text,
                    content_hash=hashlib.sha256(text.encode()).hexdigest(),
                )
            )
    return chunks


def _markdown_sections(
    lines: Iterable[str], title: str
) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(heading path below the title, paragraphs) per section with text; a blank line inside
    fenced code does not end its paragraph."""
    stack: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    paragraph: list[str] = []

    def path() -> tuple[str, ...]:
        crumbs = [title]
        for _, text in stack:
            if text and text != crumbs[-1]:  # the H1 that repeats the title is not repeated
                crumbs.append(text)
        return tuple(crumbs[1:])

    for kind, line in scan_lines(lines):
        if kind > 0:
            if paragraph:
                paragraphs.append("\n".join(paragraph))
            if paragraphs:
                yield path(), paragraphs
            paragraph, paragraphs = [], []
            while stack and stack[-1][0] >= kind:
                stack.pop()
            stack.append((kind, line))
        elif kind == CODE or line:
            paragraph.append(line)
        elif paragraph:
            paragraphs.append("\n".join(paragraph))
            paragraph = []
    if paragraph:
        paragraphs.append("\n".join(paragraph))
    if paragraphs:
        yield path(), paragraphs


def chunk_markdown(
    doc_id: str,
    text: str,
    source: Source = "runbook",
    max_chars: int = MAX_CHARS,
    *,
    title: str | None = None,
    object_type: str | None = None,
    object_key: str | None = None,
    cluster_id: str | None = None,
) -> list[Chunk]:
    """Chunks of a Markdown document split along its headings, each at most `max_chars`
    characters: a long section is split between paragraphs, a huge paragraph between lines or
    words. The title defaults to the first H1, else the doc id; sections without text are
    skipped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if title is None:
        first_h1 = next((line for kind, line in scan_lines(lines) if kind == 1 and line), None)
        title = first_h1 or doc_id
    doc = _Doc(doc_id, source, object_type or source, object_key, cluster_id, title)
    return _section_chunks(doc, _markdown_sections(lines, title), max_chars)


def _text_or_none(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and str(value).strip() else None


def chunk_runbooks(
    folder: Path, max_chars: int = MAX_CHARS, max_bytes: int = MAX_BYTES
) -> ChunkSet:
    """Chunks of every runbook in `folder`, read by the one runbook reader (doc id = file
    stem); when a runbook is specific to one cluster, its front matter's `cluster_id`."""
    result = ChunkSet()
    for path in runbook_paths(folder):
        try:
            runbook = read_runbook(path, max_bytes)
            chunks = chunk_markdown(
                runbook.doc_id,
                runbook.body,
                "runbook",
                max_chars,
                title=runbook.title,
                object_key=runbook.doc_id,
                cluster_id=_text_or_none(runbook.meta.get("cluster_id")),
            )
            if not chunks:
                raise DocumentRejected("empty", "no text besides headings and front matter")
        except DocumentRejected as exc:
            result.rejected.append(Rejected(path.stem, "runbook", exc.reason, exc.detail))
            continue
        result.chunks.extend(chunks)
    return result


_INCIDENT_FIELDS = (
    ("Symptoms", "symptoms"),
    ("Root cause", "root_cause"),
    ("Resolution", "resolution"),
    ("Affected hosts", "affected_hosts"),
    ("Affected jobs", "affected_jobs"),
    ("Runbook", "runbook_id"),
)


def _incident_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value if v is not None)
    return "" if value is None else str(value).strip()


def _incident_chunks(record: dict[str, Any], max_chars: int) -> list[Chunk]:
    incident_id = record["incident_id"]
    title = f"{incident_id}: {_incident_value(record.get('title'))}".rstrip(": ")
    facts = [
        f"{label}: {value}"
        for label, key in (
            ("Cluster", "cluster_id"),
            ("Severity", "severity"),
            ("Opened", "opened_at"),
            ("Resolved", "resolved_at"),
        )
        if (value := _incident_value(record.get(key)))
    ]
    paragraphs = [" · ".join(facts)] if facts else []
    paragraphs += [
        f"{label}: {value}"
        for label, key in _INCIDENT_FIELDS
        if (value := _incident_value(record.get(key)))
    ]
    cluster_id = _text_or_none(record.get("cluster_id"))
    doc = _Doc(incident_id, "incident", "incident", incident_id, cluster_id, title)
    return _section_chunks(doc, [((), paragraphs)], max_chars)


def chunk_incidents(
    path: Path, max_chars: int = MAX_INCIDENT_CHARS, max_bytes: int = MAX_BYTES
) -> ChunkSet:
    """One chunk per incident of a JSON-lines file: title, when and where, symptoms, root cause,
    resolution and what it touched. Lines are decoded one by one, so a bad line is rejected
    (doc id `file:line`) and the rest still count."""
    result = ChunkSet()
    size = path.stat().st_size
    if size > max_bytes:
        reason = f"{size} bytes, the limit is {max_bytes}"
        return ChunkSet(rejected=[Rejected(path.name, "incident", "too_large", reason)])
    data = path.read_bytes()
    if not data.strip():
        return ChunkSet(rejected=[Rejected(path.name, "incident", "empty", "no incidents")])
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(decode_bytes(raw))
            if not isinstance(record, dict):
                raise DocumentRejected("invalid", "not a JSON object")
            if not _text_or_none(record.get("incident_id")):
                raise DocumentRejected("invalid", "no incident_id")
            record["incident_id"] = str(record["incident_id"]).strip()
            chunks = _incident_chunks(record, max_chars)
            if not chunks:
                raise DocumentRejected("empty", "no text besides the incident id")
        except json.JSONDecodeError as exc:
            result.rejected.append(Rejected(where, "incident", "invalid", f"bad JSON: {exc}"))
        except DocumentRejected as exc:
            result.rejected.append(Rejected(where, "incident", exc.reason, exc.detail))
        else:
            result.chunks.extend(chunks)
    return result


def describe_objects(conn: duckdb.DuckDBPyConnection, max_chars: int = MAX_CHARS) -> ChunkSet:
    """One chunk per ontology object whose type declares a description (doc id
    `type:key`, not the node id, which renumbers when objects come and go); nothing before
    the ontology is built."""
    if not table_exists(conn, OBJECTS_TABLE):
        return ChunkSet()
    rows = conn.execute(
        f"SELECT object_type, object_key, title, description, CAST(properties AS VARCHAR) "
        f"FROM {quote(OBJECTS_TABLE)} WHERE description IS NOT NULL "
        "ORDER BY object_type, object_key"
    ).fetchall()
    result = ChunkSet()
    for object_type, object_key, title, description, properties in rows:
        doc_id = f"{object_type}:{object_key}"
        if not description.strip():
            result.rejected.append(Rejected(doc_id, "object", "empty", "blank description"))
            continue
        try:
            props = json.loads(properties) if properties else {}
        except json.JSONDecodeError as exc:
            result.rejected.append(Rejected(doc_id, "object", "invalid", f"properties: {exc}"))
            continue
        cluster_id = _text_or_none(props.get("cluster_id"))
        doc = _Doc(doc_id, "object", object_type, object_key, cluster_id, title or doc_id)
        section = ((), [p for p in description.split("\n\n") if p.strip()])
        result.chunks.extend(_section_chunks(doc, [section], max_chars))
    return result


def dedupe(chunks: Iterable[Chunk]) -> ChunkSet:
    """Keep the first chunk (by doc id, then chunk id) of each text and of each chunk id; the
    others are rejected as duplicates naming the chunk kept, so a copied runbook is not
    retrieved twice and an id always names one chunk."""
    kept: list[Chunk] = []
    rejected: list[Rejected] = []
    by_hash: dict[str, str] = {}
    ids: set[str] = set()
    for chunk in sorted(chunks, key=lambda c: (c.doc_id, c.chunk_id)):
        if chunk.chunk_id in ids:
            detail = f"chunk id {chunk.chunk_id} already taken by an earlier chunk"
        elif chunk.content_hash in by_hash:
            detail = f"{chunk.chunk_id} has the same text as {by_hash[chunk.content_hash]}"
        else:
            kept.append(chunk)
            ids.add(chunk.chunk_id)
            by_hash[chunk.content_hash] = chunk.chunk_id
            continue
        rejected.append(Rejected(chunk.doc_id, chunk.source, "duplicate", detail))
    return ChunkSet(kept, rejected)


def build_chunks(
    runbooks_dir: Path,
    incidents_path: Path,
    conn: duckdb.DuckDBPyConnection | None = None,
) -> ChunkSet:
    """The whole corpus, deduplicated and sorted by chunk id; without a connection, no
    object descriptions."""
    merged = ChunkSet.merge(
        chunk_runbooks(runbooks_dir),
        chunk_incidents(incidents_path),
        describe_objects(conn) if conn is not None else ChunkSet(),
    )
    unique = dedupe(merged.chunks)
    return ChunkSet(
        sorted(unique.chunks, key=lambda c: c.chunk_id), merged.rejected + unique.rejected
    )


def _arrow(rows: Sequence[Chunk] | Sequence[Rejected], kind: type) -> pa.Table:
    """Rows as an all-text arrow table, typed even when empty."""
    return pa.table(
        {f.name: pa.array([getattr(r, f.name) for r in rows], pa.string()) for f in fields(kind)}
    )


def write_chunks(conn: duckdb.DuckDBPyConnection, chunkset: ChunkSet) -> None:
    """Replace `document_chunks` and `document_rejections` in one transaction, so readers never
    see chunks of one build beside rejections of another."""
    conn.execute("BEGIN TRANSACTION")
    try:
        for table, rows, kind in (
            (CHUNKS_TABLE, chunkset.chunks, Chunk),
            (REJECTIONS_TABLE, chunkset.rejected, Rejected),
        ):
            conn.register("_incoming", _arrow(rows, kind))
            conn.execute(f"CREATE OR REPLACE TABLE {quote(table)} AS SELECT * FROM _incoming")
            conn.unregister("_incoming")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def read_chunks(conn: duckdb.DuckDBPyConnection) -> list[Chunk]:
    """The chunks last written, by chunk id; none before the first write."""
    if not table_exists(conn, CHUNKS_TABLE):
        return []
    columns = ", ".join(quote(f.name) for f in fields(Chunk))
    rows = conn.execute(f"SELECT {columns} FROM {quote(CHUNKS_TABLE)} ORDER BY chunk_id").fetchall()
    return [Chunk(*row) for row in rows]
