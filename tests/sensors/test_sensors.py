"""The data-folder sensor asks for exactly what changed, and what refers to it."""

import json
from pathlib import Path

import dagster as dg

from dagster_platform.ingestion.sources import SOURCES
from resources import DataFolderResource
from sensors.file_sensors import data_folder_changes


def tick(data_dir: Path, cursor: str | None):
    context = dg.build_sensor_context(
        cursor=cursor, resources={"data_folder": DataFolderResource(folder=str(data_dir))}
    )
    return data_folder_changes(context)


def requested(result) -> set[str]:
    (request,) = result.run_requests
    return {key.path[-1] for key in request.asset_selection}


def test_first_tick_loads_everything_then_waits(data_dir: Path) -> None:
    first = tick(data_dir, None)
    assert requested(first) == {s.name for s in SOURCES}
    second = tick(data_dir, first.cursor)
    assert isinstance(second, dg.SkipReason)
    assert "no source changed" in second.skip_message


def test_a_changed_file_reloads_it_and_its_dependents(data_dir: Path) -> None:
    cursor = tick(data_dir, None).cursor
    with (data_dir / "hosts.csv").open("a") as handle:
        handle.write("")
    assert isinstance(tick(data_dir, cursor), dg.SkipReason)  # same bytes, nothing to do
    (data_dir / "hosts.csv").write_text((data_dir / "hosts.csv").read_text() + "\n")
    result = tick(data_dir, cursor)
    assert requested(result) == {"hosts", "spark_jobs", "incidents", "golden_questions"}
    assert json.loads(result.cursor)["clusters"] == json.loads(cursor)["clusters"]


def test_a_new_runbook_reloads_the_runbooks(data_dir: Path) -> None:
    cursor = tick(data_dir, None).cursor
    (data_dir / "runbooks" / "rb-new.md").write_text("---\nid: rb-new\n---\nbody\n")
    assert requested(tick(data_dir, cursor)) == {"runbooks", "incidents", "golden_questions"}


def test_a_removed_file_requests_nothing(data_dir: Path) -> None:
    cursor = tick(data_dir, None).cursor
    (data_dir / "clusters.csv").unlink()
    assert isinstance(tick(data_dir, cursor), dg.SkipReason)
