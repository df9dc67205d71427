"""Files that are not tables at all: each is a clear error naming the file and the line."""

from pathlib import Path

import polars as pl
import pytest

from dagster_platform.ingestion.readers import LOCATION, SourceError, read_source
from dagster_platform.ingestion.sources import CLUSTERS, INCIDENTS, RUNBOOKS
from dagster_platform.ingestion.validation import validate


def _write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"clusters\.csv: file not found"):
        read_source(CLUSTERS, tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    _write(tmp_path, "clusters.csv", content)
    with pytest.raises(SourceError, match="file is empty"):
        read_source(CLUSTERS, tmp_path)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    _write(tmp_path, "clusters.csv", b"cluster_id,name\netl-prod,ok\nstaging,caf\xe9\n")
    with pytest.raises(SourceError, match=r"clusters\.csv: not valid UTF-8 at line 3"):
        read_source(CLUSTERS, tmp_path)


def test_ragged_csv_names_the_line(tmp_path: Path) -> None:
    _write(tmp_path, "clusters.csv", "cluster_id,name\netl-prod,a\nstaging,b,extra\n")
    with pytest.raises(SourceError, match="not valid CSV: line 3 has 3 fields, the header has 2"):
        read_source(CLUSTERS, tmp_path)


def test_csv_rows_remember_their_line(tmp_path: Path) -> None:
    _write(tmp_path, "clusters.csv", "cluster_id,name\netl-prod,a\nstaging,b\n")
    raw = read_source(CLUSTERS, tmp_path)
    assert raw.frame[LOCATION].to_list() == ["clusters.csv line 2", "clusters.csv line 3"]
    assert set(raw.frame.schema.values()) == {pl.String}  # values stay text until validated


def test_invalid_json_line(tmp_path: Path) -> None:
    _write(tmp_path, "incidents.jsonl", '{"incident_id": "INC-1"}\n{"incident_id": \n')
    with pytest.raises(SourceError, match=r"incidents\.jsonl: line 2 is not valid JSON"):
        read_source(INCIDENTS, tmp_path)


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    _write(tmp_path, "incidents.jsonl", '{"incident_id": "INC-1"}\n\n["INC-2"]\n')
    with pytest.raises(SourceError, match="line 3 is not a JSON object"):
        read_source(INCIDENTS, tmp_path)


def test_jsonl_keeps_line_numbers_and_lists_as_json(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "incidents.jsonl",
        '{"incident_id": "INC-1", "affected_hosts": ["h1"], "severity": 2}\n\n'
        '{"incident_id": "INC-2", "affected_hosts": []}\n',
    )
    frame = read_source(INCIDENTS, tmp_path).frame
    assert frame[LOCATION].to_list() == ["incidents.jsonl line 1", "incidents.jsonl line 3"]
    assert frame["affected_hosts"].to_list() == ['["h1"]', "[]"]
    assert frame["severity"].to_list() == ["2", None]


def test_markdown_without_front_matter(tmp_path: Path) -> None:
    """The one runbook rule (tests/ingestion/test_runbooks.py): the front matter is optional,
    the id is the file name and the title the first heading; the table's checks then refuse
    the columns only a front matter gives."""
    _write(tmp_path, "runbooks/rb-x.md", "# Just a title\n")
    raw = read_source(RUNBOOKS, tmp_path)
    assert raw.frame.select("runbook_id", "title").rows() == [("rb-x", "Just a title")]
    schema = validate(raw, lambda table, key: set()).outcomes[0]
    assert not schema.passed
    assert any("language" in problem for problem in schema.problems)


def test_markdown_with_broken_yaml(tmp_path: Path) -> None:
    _write(tmp_path, "runbooks/rb-x.md", "---\nid: [unclosed\n---\nbody\n")
    with pytest.raises(SourceError, match="front matter is not valid YAML"):
        read_source(RUNBOOKS, tmp_path)


def test_markdown_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="folder not found"):
        read_source(RUNBOOKS, tmp_path)
    (tmp_path / "runbooks").mkdir()
    with pytest.raises(SourceError, match=r"no \.md files"):
        read_source(RUNBOOKS, tmp_path)


def test_duplicate_column_names(tmp_path: Path) -> None:
    _write(tmp_path, "clusters.csv", "cluster_id,name,cluster_id\netl-prod,a,b\n")
    with pytest.raises(SourceError, match=r"line 1: duplicate column names \['cluster_id'\]"):
        read_source(CLUSTERS, tmp_path)
