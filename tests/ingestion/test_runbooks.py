"""One runbook reader, one rule set: the same files through the warehouse table, the knowledge
base and the fine-tuning pairs, which accept and refuse the same ones."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dagster_platform.finetune.dataset import runbook_examples
from dagster_platform.ingestion.documents import DocumentRejected
from dagster_platform.ingestion.readers import SourceError, read_source
from dagster_platform.ingestion.runbooks import read_runbook
from dagster_platform.ingestion.sources import RUNBOOKS
from dagster_platform.knowledge.documents import chunk_runbooks

KOREAN = (
    "---\nid: rb-ko\ntitle: 디스크 장애\nlanguage: ko\ntags: [disk]\n---\n"
    "# 디스크 장애\n\n## 조치\n\n사용률을 확인한다.\n"
)
GOOD = {
    "rb-ko.md": KOREAN.encode("cp949"),  # an older Korean document
    "rb-bom.md": ("\ufeff" + KOREAN.replace("rb-ko", "rb-bom")).encode(),
    "rb-bare.md": b"# Bare runbook\n\n## Steps\n\nCheck the disk.\n",  # no front matter
}
BAD = {
    "rb-unclosed.md": (b"---\nid: rb-unclosed\ntitle: x\n# Title\n\nBody.\n", "no closing"),
    "rb-renamed.md": (b"---\nid: rb-original\n---\n# Title\n\nBody.\n", "rb-original"),
    "rb-binary.md": (random.Random(3).randbytes(2048) + b"\0", "NUL"),
    "rb-list.md": (b"---\n- a\n- b\n---\n# Title\n\nBody.\n", "not a mapping"),
}


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "runbooks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_every_path_accepts_the_same_runbooks_with_the_same_ids_and_titles(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, GOOD)
    table = read_source(RUNBOOKS, tmp_path).frame
    chunks = chunk_runbooks(folder)
    pairs, skipped = runbook_examples(folder)
    ids = {"rb-ko", "rb-bom", "rb-bare"}
    assert set(table["runbook_id"]) == ids == {c.doc_id for c in chunks.chunks}
    assert chunks.rejected == [] and not skipped and len(pairs) >= 3
    titles = dict(zip(table["runbook_id"], table["title"], strict=True))
    assert titles == {"rb-ko": "디스크 장애", "rb-bom": "디스크 장애", "rb-bare": "Bare runbook"}
    assert {c.doc_id: c.title for c in chunks.chunks} == titles
    assert "사용률을 확인한다." in table.filter(table["runbook_id"] == "rb-ko")["body"][0]


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_path_refuses_the_same_runbook_for_the_same_reason(tmp_path: Path, name: str) -> None:
    data, why = BAD[name]
    folder = _folder(tmp_path, {**GOOD, name: data})
    with pytest.raises(DocumentRejected, match=why):
        read_runbook(folder / name)
    with pytest.raises(SourceError, match=rf"{name}: .*{why}"):
        read_source(RUNBOOKS, tmp_path)  # the warehouse refuses the whole source
    chunks = chunk_runbooks(folder)  # the knowledge base skips the one file
    (rejected,) = chunks.rejected
    assert rejected.doc_id == Path(name).stem and why in rejected.detail
    assert {c.doc_id for c in chunks.chunks} == {"rb-ko", "rb-bom", "rb-bare"}
    _, skipped = runbook_examples(folder)  # and so does the dataset
    assert sum(skipped.values()) == 1
