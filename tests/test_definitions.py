"""The code location loads, is shaped as the design says, and does nothing at import."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dagster_platform.definitions import defs
from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.rollups import ROLLUPS
from dagster_platform.ontology.loader import OntologyError
from dagster_platform.settings import REPO_ROOT
from tests.support.graph_snapshot import SNAPSHOT_FILE, graph_snapshot
from tests.support.state import ONTOLOGY_DIR

SNAPSHOTS = Path(__file__).parent / "snapshots"


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs())


def test_the_ingestion_group_has_one_guarded_asset_per_source() -> None:
    graph = defs().resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    ingestion = {k.path[-1] for k in keys if graph.get(k).group_name == "ingestion"}
    assert {s.name for s in SOURCES} <= ingestion
    for spec in SOURCES:
        node = graph.get(dg.AssetKey(spec.name))
        assert node.pools == {"warehouse"}
        assert {p.path[-1] for p in node.parent_keys} == set(spec.upstream_tables)
        checks = graph.get_check_keys_for_assets({dg.AssetKey(spec.name)})
        assert {c.name for c in checks} >= {"columns_and_types", "keys", "values"}
        for check in checks:
            assert graph.get_check_spec(check).blocking


def test_the_streams_land_into_typed_tables_with_rollups_that_follow() -> None:
    graph = defs().resolve_asset_graph()
    landed = {"host_metrics", "spark_job_events", "alert_events", "feedback_events"}
    derived = {spec.name for spec in ROLLUPS} | {"dead_letter_events"}
    assert {"host_utilization_1m", "cluster_utilization_1h", "spark_job_state"} <= derived
    for name in landed | derived:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "ingestion"
        assert node.pools == {"warehouse"}
        assert node.automation_condition is None  # the stream sensors land and refresh them
    checks = graph.get_check_keys_for_assets({dg.AssetKey("host_metrics")})
    assert {c.name for c in checks} == {"nothing_dropped"}


def test_resources_and_sensors_are_merged() -> None:
    resolved = defs().get_repository_def()
    assert {"warehouse", "data_folder", "kafka"} <= set(resolved.get_top_level_resources())
    for name in (
        "data_folder_changes",
        "raw_events_backlog",
        "alert_events_backlog",
        "feedback_events_backlog",
        "declarative_automation",
    ):
        sensor = resolved.get_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_importing_the_code_location_touches_nothing(tmp_path: Path) -> None:
    """No socket, no state folder, no settings and no YAML at import: a profile that does not
    exist and an ontology folder that is missing only fail once the definitions are built."""
    state = tmp_path / "never-created"
    code = (
        "import socket, json\n"
        "opened = []\n"
        "real = socket.socket.connect\n"
        "socket.socket.connect = lambda self, *a: opened.append(a) or real(self, *a)\n"
        "import dagster_platform.definitions\n"
        "print(json.dumps(opened))\n"
    )
    env = {
        **os.environ,
        "DAGSTER_PLATFORM_STATE": str(state),
        "DAGSTER_PLATFORM_PROFILE": "no-such-profile",
        "DAGSTER_PLATFORM_ONTOLOGY": str(tmp_path / "no-ontology"),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert not state.exists()


def test_workspace_file_points_at_the_code_location() -> None:
    text = (REPO_ROOT / "workspace.yaml").read_text()
    assert "module_name: dagster_platform.definitions" in text


def test_the_asset_graph_matches_its_snapshot(state_dir: Path) -> None:
    """Keys, groups, dependencies, checks and automation as they were before the code moved;
    see tests/support/graph_snapshot.py to write a new snapshot after an intended change."""
    expected = json.loads((SNAPSHOTS / SNAPSHOT_FILE).read_text(encoding="utf-8"))
    actual = graph_snapshot(defs())
    assert actual.keys() == expected.keys()
    assert sorted(actual["assets"]) == sorted(expected["assets"])
    for key, shape in expected["assets"].items():
        assert actual["assets"][key] == shape, key
    assert actual == expected


def test_an_ontology_that_does_not_load_fails_the_definitions(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ontology"
    shutil.copytree(ONTOLOGY_DIR, folder)
    (folder / "links.yaml").write_text("link_types: [unclosed\n", encoding="utf-8")
    monkeypatch.setenv("DAGSTER_PLATFORM_ONTOLOGY", str(folder))
    with pytest.raises(OntologyError, match=r"links\.yaml") as raised:
        defs()
    assert any(str(folder) in note for note in raised.value.__notes__)
