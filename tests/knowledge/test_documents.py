"""The document chunker against real files and a real DuckDB file: headings as context, bounded
chunks, stable ids, and every kind of bad input rejected with its reason."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import duckdb
import pytest

from dagster_platform.ingestion.documents import DocumentRejected, read_text
from dagster_platform.knowledge.documents import (
    Chunk,
    ChunkSet,
    Rejected,
    build_chunks,
    chunk_incidents,
    chunk_markdown,
    chunk_runbooks,
    dedupe,
    describe_objects,
    read_chunks,
    write_chunks,
)
from dagster_platform.ontology.build import build_objects
from dagster_platform.ontology.loader import load_ontology
from tests.support.state import ONTOLOGY_DIR, SAMPLE_DIR

RUNBOOK = """---
id: rb-test
title: Disk full on a worker
cluster_id: etl-prod
---
# Disk full on a worker

Read this first.

## Diagnosis

Check the mounts.

```bash
# not a heading: a shell comment
df -h

du -sh /data/*
```

### Inodes

Inode exhaustion looks like a full disk.

## Remediation

Remove orphaned appcache.
"""


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the sample runbooks and incidents."""
    runbooks = tmp_path / "runbooks"
    shutil.copytree(SAMPLE_DIR / "runbooks", runbooks)
    incidents = tmp_path / "incidents.jsonl"
    shutil.copyfile(SAMPLE_DIR / "incidents.jsonl", incidents)
    return runbooks, incidents


def _by_heading(chunks: list[Chunk]) -> dict[str, Chunk]:
    return {c.heading: c for c in chunks}


def _reasons(chunkset: ChunkSet) -> dict[str, str]:
    return {r.doc_id: r.reason for r in chunkset.rejected}


def test_headings_are_kept_as_context_and_code_is_not_a_heading(tmp_path: Path) -> None:
    (tmp_path / "rb-test.md").write_text(RUNBOOK, encoding="utf-8")
    result = chunk_runbooks(tmp_path)
    assert result.rejected == []
    chunks = _by_heading(result.chunks)
    assert set(chunks) == {
        "Disk full on a worker",
        "Disk full on a worker > Diagnosis",
        "Disk full on a worker > Diagnosis > Inodes",
        "Disk full on a worker > Remediation",
    }
    diagnosis = chunks["Disk full on a worker > Diagnosis"]
    assert diagnosis.text.startswith("Disk full on a worker > Diagnosis\n\nCheck the mounts.")
    assert "# not a heading: a shell comment\ndf -h\n\ndu -sh /data/*\n```" in diagnosis.text
    assert diagnosis.doc_id == "rb-test" and diagnosis.object_key == "rb-test"
    assert (diagnosis.source, diagnosis.object_type) == ("runbook", "runbook")
    assert diagnosis.cluster_id == "etl-prod"
    assert diagnosis.title == "Disk full on a worker"
    assert "id: rb-test" not in "".join(c.text for c in result.chunks)


def test_a_long_section_is_split_on_paragraphs_within_the_bound() -> None:
    paragraphs = [
        f"Paragraph {i}: " + "word " * random.Random(i).randint(5, 120) for i in range(60)
    ]
    huge = "x" * 5000  # one paragraph without a single space: hard-split
    text = (
        "# Title\n\n## Long\n\n"
        + "\n\n".join([*paragraphs, huge])
        + "\n\n## Empty\n\n## Last\n\nok"
    )
    chunks = chunk_markdown("doc", text, max_chars=400)
    assert all(len(c.text) <= 400 for c in chunks)
    long = [c for c in chunks if c.heading == "Title > Long"]
    assert len(long) > 10
    assert all(c.text.startswith("Title > Long\n\n") for c in long)
    bodies = "\n\n".join(c.text.removeprefix("Title > Long\n\n") for c in long)
    starts = [bodies.find(f"Paragraph {i}: ") for i in range(60)]
    assert -1 not in starts and starts == sorted(starts)  # every paragraph kept, in order
    assert bodies.replace("\n", "").count("x") == 5000
    assert [c.heading for c in chunks if c.heading != "Title > Long"] == ["Title > Last"]
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_ids_are_stable_across_runs_and_edits_elsewhere(corpus: tuple[Path, Path]) -> None:
    runbooks, incidents = corpus
    first = build_chunks(runbooks, incidents)
    assert build_chunks(runbooks, incidents) == first
    disk_ids = {c.chunk_id: c.text for c in first.chunks if c.doc_id == "rb-disk-full"}

    other = runbooks / "rb-high-cpu.md"
    other.write_text(other.read_text(encoding="utf-8") + "\n## Notes\n\nNew.\n", encoding="utf-8")
    disk = runbooks / "rb-disk-full.md"
    edited = disk.read_text(encoding="utf-8").replace(
        "## Diagnosis", "## Background\n\nA new section.\n\n## Diagnosis"
    )
    disk.write_text(edited.replace("Never delete files", "Never remove files"), encoding="utf-8")
    second = build_chunks(runbooks, incidents)

    after = {c.chunk_id: c.text for c in second.chunks if c.doc_id == "rb-disk-full"}
    assert set(after) - set(disk_ids) == {
        c.chunk_id for c in second.chunks if c.heading.endswith("> Background")
    }
    changed = {i for i in disk_ids if after[i] != disk_ids[i]}
    assert {next(c for c in second.chunks if c.chunk_id == i).heading for i in changed} == {
        "Local disk full on a worker node > Remediation"
    }
    assert [c for c in second.chunks if c.doc_id == "INC-2026-0044"] == [
        c for c in first.chunks if c.doc_id == "INC-2026-0044"
    ]


def test_the_sample_corpus_chunks_without_rejections() -> None:
    result = build_chunks(SAMPLE_DIR / "runbooks", SAMPLE_DIR / "incidents.jsonl")
    assert result.rejected == []
    runbooks = {c.doc_id for c in result.chunks if c.source == "runbook"}
    assert runbooks == {p.stem for p in (SAMPLE_DIR / "runbooks").glob("*.md")}
    assert len(runbooks) == 16
    incidents = [c for c in result.chunks if c.source == "incident"]
    assert len(incidents) == len({c.doc_id for c in incidents}) == 55
    assert [c.chunk_id for c in result.chunks] == sorted(c.chunk_id for c in result.chunks)
    assert all(len(c.text) <= 1200 for c in result.chunks if c.source == "runbook")

    korean = _by_heading([c for c in result.chunks if c.doc_id == "rb-memory-pressure"])
    assert any(h.endswith(" > 진단") for h in korean)
    first = next(c for c in incidents if c.doc_id == "INC-2026-0001")
    assert first.cluster_id == "etl-prod" and first.object_key == "INC-2026-0001"
    for part in ("연초 재처리로", "Root cause: ", "Resolution: ", "etl-prod-worker-04", "sev2"):
        assert part in first.text


def test_empty_whitespace_binary_and_undecodable_files(tmp_path: Path) -> None:
    (tmp_path / "rb-empty.md").write_bytes(b"")
    (tmp_path / "rb-blank.md").write_text("  \n\t\n\u3000\n", encoding="utf-8")
    (tmp_path / "rb-headings.md").write_text("# Only\n\n## Headings\n", encoding="utf-8")
    (tmp_path / "rb-binary.md").write_bytes(random.Random(7).randbytes(4096) + b"\0")
    (tmp_path / "rb-controls.md").write_bytes(bytes(range(1, 9)) * 200)
    (tmp_path / "rb-latin1.md").write_bytes("# Café\n\nCrème brûlée, déjà vu.\n".encode("latin-1"))
    korean = "# 디스크 장애\n\n## 조치\n\n디스크 사용률을 확인한다.\n"
    (tmp_path / "rb-cp949.md").write_bytes(korean.encode("cp949"))
    (tmp_path / "rb-bom.md").write_bytes("\ufeff# 제목\n\n본문\n".encode())

    result = chunk_runbooks(tmp_path)
    assert _reasons(result) == {
        "rb-empty": "empty",
        "rb-blank": "empty",
        "rb-headings": "empty",
        "rb-binary": "binary",
        "rb-controls": "binary",
        "rb-latin1": "undecodable",
    }
    assert all(r.source == "runbook" and r.detail for r in result.rejected)
    chunks = _by_heading(result.chunks)
    assert chunks["디스크 장애 > 조치"].text == "디스크 장애 > 조치\n\n디스크 사용률을 확인한다."
    assert chunks["제목"].text == "제목\n\n본문"


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "rb-big.md"
    path.write_text("# Big\n\n" + "text " * 1000, encoding="utf-8")
    with pytest.raises(DocumentRejected) as caught:
        read_text(path, max_bytes=1000)
    assert caught.value.reason == "too_large"
    assert _reasons(chunk_runbooks(tmp_path, max_bytes=1000)) == {"rb-big": "too_large"}


def test_a_very_large_document_is_chunked_bounded_and_fast(tmp_path: Path) -> None:
    sections = []
    for i in range(2500):
        body = "\n\n".join(
            f"섹션 {i} 문단 {j}. " + "디스크 사용률과 로그를 확인한다. " * 20 for j in range(4)
        )
        sections.append(f"## Section {i}\n\n{body}\n\n### Detail {i}\n\n" + "z" * 300)
    text = "# Huge\n\n" + "\n\n".join(sections) + "\n\n## Tail\n\n" + "y" * 200_000
    (tmp_path / "rb-huge.md").write_text(text, encoding="utf-8")
    assert (tmp_path / "rb-huge.md").stat().st_size > 5_000_000

    started = time.perf_counter()
    result = chunk_runbooks(tmp_path)
    elapsed = time.perf_counter() - started

    assert result.rejected == []
    assert elapsed < 5, f"chunking 5 MB took {elapsed:.1f}s"
    assert len(result.chunks) > 3 * 2500  # two per section, one per detail, the tail
    assert max(len(c.text) for c in result.chunks) <= 1200
    assert len({c.chunk_id for c in result.chunks}) == len(result.chunks)


def test_a_duplicate_document_is_rejected_naming_the_one_kept(tmp_path: Path) -> None:
    shutil.copyfile(SAMPLE_DIR / "runbooks" / "rb-disk-full.md", tmp_path / "rb-disk-full.md")
    original = (SAMPLE_DIR / "runbooks" / "rb-disk-full.md").read_text(encoding="utf-8")
    # a copy under another name, without the id that would no longer match its file name
    copy = original.replace("id: rb-disk-full\n", "")
    (tmp_path / "rb-zz-copy.md").write_text(copy, encoding="utf-8")
    result = dedupe(chunk_runbooks(tmp_path).chunks)
    assert {c.doc_id for c in result.chunks} == {"rb-disk-full"}
    kept = {c.chunk_id for c in result.chunks}
    assert result.rejected and {r.doc_id for r in result.rejected} == {"rb-zz-copy"}
    assert all(r.reason == "duplicate" for r in result.rejected)
    assert all(any(k in r.detail for k in kept) for r in result.rejected)


def test_a_chunk_id_is_never_emitted_twice(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    line = {"incident_id": "INC-1", "title": "first", "symptoms": "slow"}
    again = {**line, "title": "second"}
    path.write_text(f"{json.dumps(line)}\n{json.dumps(again)}\n", encoding="utf-8")
    (tmp_path / "runbooks").mkdir()
    result = build_chunks(tmp_path / "runbooks", path)
    assert [c.title for c in result.chunks] == ["INC-1: first"]
    assert [(r.doc_id, r.reason) for r in result.rejected] == [("INC-1", "duplicate")]


def test_a_deleted_document_disappears_from_the_next_build(corpus: tuple[Path, Path]) -> None:
    runbooks, incidents = corpus
    first = build_chunks(runbooks, incidents)
    (runbooks / "rb-high-cpu.md").unlink()
    second = build_chunks(runbooks, incidents)
    assert any(c.doc_id == "rb-high-cpu" for c in first.chunks)
    assert not any(c.doc_id == "rb-high-cpu" for c in second.chunks)
    assert second.chunks == [c for c in first.chunks if c.doc_id != "rb-high-cpu"]


def test_invalid_incident_lines_are_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    good = {"incident_id": "INC-9", "cluster_id": "staging", "title": "Disk", "symptoms": "full"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"title": "no id"}),
        "[1, 2]",
        "",
        json.dumps({"incident_id": "INC-10"}),
        json.dumps({"incident_id": "INC-11", "resolution": "복구"}, ensure_ascii=False),
    ]
    path = tmp_path / "incidents.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = chunk_incidents(path)
    assert [c.doc_id for c in result.chunks] == ["INC-9", "INC-11"]
    assert result.chunks[0].cluster_id == "staging"
    assert result.chunks[1].text == "INC-11\n\nResolution: 복구"
    assert _reasons(result) == {
        "incidents.jsonl:2": "invalid",
        "incidents.jsonl:3": "invalid",
        "incidents.jsonl:4": "invalid",
        "incidents.jsonl:6": "empty",
    }


def test_object_descriptions_from_the_ontology(sample_warehouse: Path) -> None:
    with duckdb.connect(str(sample_warehouse)) as conn:
        assert describe_objects(conn) == ChunkSet()
        assert build_objects(conn, load_ontology(ONTOLOGY_DIR)).published
        (described,) = conn.execute(
            "SELECT count(*) FROM ontology_objects WHERE description IS NOT NULL"
        ).fetchone()
        result = describe_objects(conn)
    assert result.rejected == []
    assert len(result.chunks) == described > 0
    host = next(c for c in result.chunks if c.doc_id == "host:etl-prod-worker-02")
    assert (host.source, host.object_type, host.object_key) == (
        "object",
        "host",
        "etl-prod-worker-02",
    )
    assert host.cluster_id == "etl-prod"
    assert host.text.startswith(f"{host.title}\n\nHost etl-prod-worker-02 is a ")
    assert not any(c.object_type in ("runbook", "incident") for c in result.chunks)


def test_write_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    chunks = chunk_markdown("rb-x", RUNBOOK.split("---\n", 2)[2], cluster_id="etl-prod")
    rejected = [Rejected("rb-y", "runbook", "binary", "contains NUL bytes")]
    with duckdb.connect(str(path)) as conn:
        assert read_chunks(conn) == []
        write_chunks(conn, ChunkSet(chunks, rejected))
    with duckdb.connect(str(path)) as conn:
        assert read_chunks(conn) == sorted(chunks, key=lambda c: c.chunk_id)
        assert conn.execute("SELECT * FROM document_rejections").fetchall() == [
            ("rb-y", "runbook", "binary", "contains NUL bytes")
        ]
        write_chunks(conn, ChunkSet(chunks[:1], []))
        assert read_chunks(conn) == chunks[:1]
        assert conn.execute("SELECT count(*) FROM document_rejections").fetchone() == (0,)
