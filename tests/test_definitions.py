"""The code location loads, is shaped as the design says, and does nothing at import."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from dagster_platform.definitions import defs
from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.rollups import ROLLUPS
from dagster_platform.settings import REPO_ROOT


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs)


def test_the_ingestion_group_has_one_guarded_asset_per_source() -> None:
    graph = defs.resolve_asset_graph()
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
    graph = defs.resolve_asset_graph()
    landed = {"host_metrics", "spark_job_events", "alert_events", "feedback_events"}
    derived = {spec.name for spec in ROLLUPS} | {"dead_letter_events"}
    assert {"host_utilization_1m", "cluster_utilization_1h", "spark_job_state"} <= derived
    for name in landed | derived:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "ingestion"
        assert node.pools == {"warehouse"}
        assert (node.automation_condition is not None) == (name in derived)
    checks = graph.get_check_keys_for_assets({dg.AssetKey("host_metrics")})
    assert {c.name for c in checks} == {"nothing_dropped"}


def test_resources_and_sensors_are_merged() -> None:
    resolved = defs.get_repository_def()
    assert {"warehouse", "data_folder", "kafka"} <= set(resolved.get_top_level_resources())
    for name in (
        "data_folder_changes",
        "raw_events_backlog",
        "alert_events_backlog",
        "feedback_events_backlog",
        "rollup_automation",
    ):
        sensor = resolved.get_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_importing_the_code_location_touches_nothing(tmp_path: Path) -> None:
    state = tmp_path / "never-created"
    code = (
        "import socket, json\n"
        "opened = []\n"
        "real = socket.socket.connect\n"
        "socket.socket.connect = lambda self, *a: opened.append(a) or real(self, *a)\n"
        "import dagster_platform.definitions\n"
        "print(json.dumps(opened))\n"
    )
    env = {**os.environ, "DAGSTER_PLATFORM_STATE": str(state)}
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
