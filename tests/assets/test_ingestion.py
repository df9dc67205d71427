"""The ingestion group materialized against a real DuckDB file, with good and bad inputs."""

import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.ingestion import file_assets
from dagster_platform.ingestion.sources import SOURCES
from resources import DataFolderResource, WarehouseResource

ALL = [s.name for s in SOURCES]


def materialize(data_dir: Path, database: Path, names: list[str] | None = None):
    selected = [a for a in file_assets if a.key.path[-1] in (names or ALL)]
    return dg.materialize(
        selected,
        resources={
            "warehouse": WarehouseResource(database=str(database)),
            "data_folder": DataFolderResource(folder=str(data_dir)),
        },
        raise_on_error=False,
    )


def materialized(result) -> set[str]:
    return {
        event.asset_key.path[-1]
        for event in result.all_events
        if event.event_type_value == "ASSET_MATERIALIZATION"
    }


def table_snapshot(database: Path, table: str) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


@pytest.fixture(scope="module")
def good_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data loaded once; tests copy it before changing anything."""
    from tests.support.state import SAMPLE_DIR

    database = tmp_path_factory.mktemp("good") / "warehouse.duckdb"
    result = materialize(SAMPLE_DIR, database)
    assert result.success
    return database


@pytest.fixture
def warehouse_copy(good_warehouse: Path, tmp_path: Path) -> Path:
    target = tmp_path / "warehouse.duckdb"
    shutil.copy(good_warehouse, target)
    return target


def test_the_sample_data_passes_every_check(good_warehouse: Path, data_dir: Path) -> None:
    result = materialize(data_dir, good_warehouse)
    assert result.success
    assert materialized(result) == set(ALL)
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)
    assert len(evaluations) == sum(4 if s.references else 3 for s in SOURCES)
    with duckdb.connect(str(good_warehouse), read_only=True) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ALL}
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'incidents'"
            ).fetchall()
        )
    assert counts["clusters"] == 3
    assert 35 <= counts["hosts"] <= 45
    assert 180 <= counts["spark_jobs"] <= 220
    assert counts["runbooks"] >= 15
    assert counts["incidents"] >= 50
    assert counts["golden_questions"] >= 40
    assert types["affected_hosts"] == "VARCHAR[]"
    assert types["opened_at"] == "TIMESTAMP WITH TIME ZONE"


def test_materializations_carry_what_people_read(good_warehouse: Path, data_dir: Path) -> None:
    result = materialize(data_dir, good_warehouse, ["hosts"])
    (event,) = result.asset_materializations_for_node("hosts")
    metadata = event.metadata
    assert metadata["dagster/row_count"].value == 40
    columns = [c.name for c in metadata["dagster/column_schema"].value.columns]
    assert columns[:3] == ["host_id", "cluster_id", "role"]
    assert metadata["preview"].value.startswith("| host_id | cluster_id |")
    assert "_location" not in columns


def _rewrite(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def _replace_field(path: Path, line: int, column: str, value: str) -> None:
    """Set one CSV field (line numbers as an editor shows them, header is line 1)."""

    def edit(lines: list[str]) -> list[str]:
        header = lines[0].split(",")
        fields = lines[line - 1].split(",")
        fields[header.index(column)] = value
        lines[line - 1] = ",".join(fields)
        return lines

    _rewrite(path, edit)


def _drop_column(path: Path, column: str) -> None:
    def edit(lines: list[str]) -> list[str]:
        index = lines[0].split(",").index(column)
        return [",".join(f for i, f in enumerate(line.split(",")) if i != index) for line in lines]

    _rewrite(path, edit)


BAD_CHECKS = {
    "missing column": (
        "hosts",
        lambda d: _drop_column(d / "hosts.csv", "cpu_usage_pct"),
        "columns_and_types",
        "missing columns ['cpu_usage_pct']",
    ),
    "wrong type": (
        "hosts",
        lambda d: _replace_field(d / "hosts.csv", 6, "vcores", "thirty-two"),
        "columns_and_types",
        "hosts.csv line 6",
    ),
    "duplicate ids": (
        "hosts",
        lambda d: _rewrite(d / "hosts.csv", lambda lines: [*lines, lines[3]]),
        "keys",
        "hosts.csv line 4",
    ),
    "value out of range": (
        "hosts",
        lambda d: _replace_field(d / "hosts.csv", 9, "cpu_usage_pct", "140.0"),
        "values",
        "hosts.csv line 9",
    ),
    "unknown cluster": (
        "hosts",
        lambda d: _replace_field(d / "hosts.csv", 12, "cluster_id", "mars-prod"),
        "references",
        "hosts.csv line 12",
    ),
    "end before start": (
        "spark_jobs",
        lambda d: _replace_field(d / "spark_jobs.csv", 2, "end_time", "2000-01-01T00:00:00Z"),
        "values",
        "spark_jobs.csv line 2",
    ),
    "header only": (
        "hosts",
        lambda d: _rewrite(d / "hosts.csv", lambda lines: lines[:1]),
        "columns_and_types",
        "has a header but no rows",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKS))
def test_bad_rows_fail_a_blocking_check_and_keep_the_good_table(
    case: str, data_dir: Path, warehouse_copy: Path
) -> None:
    target, corrupt, check, expected = BAD_CHECKS[case]
    before = table_snapshot(warehouse_copy, target)
    corrupt(data_dir)
    result = materialize(data_dir, warehouse_copy)

    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [(e.asset_key.path[-1], e.check_name) for e in failed] == [(target, check)]
    metadata = failed[0].metadata
    assert expected in metadata["failing_rows"].value
    if "line" in expected:  # the whole source record is shown too
        assert metadata["failing_records"].value.splitlines()[2].startswith(f"| {expected} |")
    assert failed[0].blocking
    assert target not in materialized(result)
    downstream = {s.name for s in SOURCES if target in s.upstream_tables}
    assert not downstream & materialized(result)
    assert table_snapshot(warehouse_copy, target) == before


BAD_FILES = {
    "empty file": ("clusters", lambda d: (d / "clusters.csv").write_bytes(b""), "file is empty"),
    "not UTF-8": (
        "hosts",
        lambda d: (d / "hosts.csv").write_bytes(
            (d / "hosts.csv").read_bytes().replace(b"Rocky", b"R\xf6cky", 1)
        ),
        "not valid UTF-8 at line 2",
    ),
    "not valid CSV": (
        "hosts",
        lambda d: _rewrite(
            d / "hosts.csv", lambda lines: [*lines[:5], lines[5] + ",x", *lines[6:]]
        ),
        "line 6 has 14 fields",
    ),
    "not valid JSON": (
        "incidents",
        lambda d: _rewrite(d / "incidents.jsonl", lambda lines: [*lines[:7], "{oops", *lines[7:]]),
        "line 8 is not valid JSON",
    ),
    "missing file": ("clusters", lambda d: (d / "clusters.csv").unlink(), "file not found"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_files_fail_with_a_clear_error_and_keep_the_good_table(
    case: str, data_dir: Path, warehouse_copy: Path
) -> None:
    target, corrupt, expected = BAD_FILES[case]
    before = table_snapshot(warehouse_copy, target)
    corrupt(data_dir)
    result = materialize(data_dir, warehouse_copy)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == target)
    message = failure.step_failure_data.user_failure_data.description
    assert expected in message
    assert str(data_dir) in message
    downstream = {s.name for s in SOURCES if target in s.upstream_tables}
    assert not ({target} | downstream) & materialized(result)
    assert table_snapshot(warehouse_copy, target) == before


def test_dagster_cli_materializes_from_the_code_location(
    state_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a user runs: `dagster asset materialize` against the code location."""
    import subprocess
    import sys

    monkeypatch.setenv("DAGSTER_PLATFORM_DATA", str(data_dir))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "dagster_platform.definitions",
            "--select",
            "clusters,hosts",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert table_snapshot(state_dir / "warehouse.duckdb", "clusters")
    assert len(table_snapshot(state_dir / "warehouse.duckdb", "hosts")) == 40
