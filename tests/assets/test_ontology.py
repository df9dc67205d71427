"""The ontology group materialized through Dagster on a real DuckDB file: the good path, a bad
schema, a breaking change, dangling links, automation and the YAML sensor."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.ontology import ontology_assets
from dagster_platform.definitions import defs
from dagster_platform.settings import Settings
from resources import OntologyResource, StateResource, WarehouseResource
from sensors.ontology_sensors import ontology_changes
from tests.support.results import checks, materialized, metadata
from tests.support.state import ONTOLOGY_DIR


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "ontology"
    shutil.copytree(ONTOLOGY_DIR, target)
    return target


def run(warehouse: Path, folder: Path, instance: dg.DagsterInstance | None = None):
    """The group as the code location loaded it from the shipped ontology, run against
    `folder`: the YAML a person edits while it runs (an invalid one fails the definitions when
    they next load, see tests/test_definitions.py)."""
    return dg.materialize(
        ontology_assets(Settings(ontology_dir=ONTOLOGY_DIR)),
        resources={
            "warehouse": WarehouseResource(database=str(warehouse)),
            "ontology": OntologyResource(folder=str(folder)),
            "state": StateResource(folder=str(warehouse.parent / "state")),
        },
        instance=instance,
        raise_on_error=False,
    )


def test_the_sample_ontology_builds_end_to_end(
    sample_warehouse: Path, folder: Path, state_dir: Path
) -> None:
    result = run(sample_warehouse, folder)
    assert result.success
    assert materialized(result) == {
        "ontology_schema",
        "ontology_objects",
        "ontology_links",
        "ontology_graph",
    }
    assert all(e.passed for e in checks(result).values()) and len(checks(result)) == 6
    assert "First version" in metadata(result, "ontology_schema")["changes"].value
    assert metadata(result, "ontology_objects")["objects_per_type"].value["spark_job"] == 207
    graph = metadata(result, "ontology_graph")
    assert graph["picture"].value.startswith("![ontology graph](data:image/png;base64,iVBOR")
    assert graph["components"].value == 1 and graph["communities"].value > 1
    assert "cluster:etl-prod" in graph["most_connected"].value
    assert Path(graph["picture_path"].value).read_bytes()[:4] == b"\x89PNG"
    with duckdb.connect(str(sample_warehouse), read_only=True) as conn:
        (objects,) = conn.execute("SELECT count(*) FROM ontology_objects").fetchall()[0]
        (metrics,) = conn.execute("SELECT count(*) FROM ontology_graph_metrics").fetchall()[0]
        (versions,) = conn.execute("SELECT count(*) FROM ontology_versions").fetchall()[0]
    assert objects == metrics == 321 and versions == 1

    again = run(sample_warehouse, folder)
    assert again.success
    assert "No changes since" in metadata(again, "ontology_schema")["changes"].value


def test_a_bad_schema_fails_its_check_and_nothing_downstream_runs(
    sample_warehouse: Path, folder: Path, state_dir: Path
) -> None:
    objects = folder / "objects.yaml"
    objects.write_text(
        objects.read_text().replace("rack: {type: string}", "rack: {type: strng}"),
        encoding="utf-8",
    )
    result = run(sample_warehouse, folder)
    assert not result.success
    assert materialized(result) == set()
    valid = checks(result)["valid"]
    assert not valid.passed
    assert "object_types.host.properties.rack.type" in valid.metadata["problems"].value


def test_a_breaking_change_is_refused_unless_declared(
    sample_warehouse: Path, folder: Path, state_dir: Path
) -> None:
    assert run(sample_warehouse, folder).success
    objects = folder / "objects.yaml"
    objects.write_text(
        objects.read_text()
        .replace("      rack: {type: string}\n", "")
        .replace(" on rack {rack}", ""),
        encoding="utf-8",
    )
    refused = run(sample_warehouse, folder)
    assert not refused.success and materialized(refused) == set()
    check = checks(refused)["no_breaking_change"]
    assert not check.passed and "property_removed host.rack" in check.metadata["breaking"].value

    (folder / "migrations.yaml").write_text(
        "migrations:\n  - change: property_removed\n    object_type: host\n    property: rack\n"
        "    reason: racks are not tracked any more\n",
        encoding="utf-8",
    )
    accepted = run(sample_warehouse, folder)
    assert accepted.success
    assert "declared as a migration" in metadata(accepted, "ontology_schema")["changes"].value


def test_dangling_links_fail_the_check_and_keep_the_graph(
    sample_warehouse: Path, folder: Path, state_dir: Path
) -> None:
    assert run(sample_warehouse, folder).success
    with duckdb.connect(str(sample_warehouse)) as conn:
        conn.execute(
            "INSERT INTO spark_jobs (application_id, cluster_id, name, state, driver_host) "
            "VALUES ('application_0_0001', 'etl-prod', 'orphan', 'RUNNING', 'gone-host-07')"
        )
    result = run(sample_warehouse, folder)
    assert not result.success
    assert materialized(result) == {"ontology_schema", "ontology_objects"}
    check = checks(result)["no_dangling_links"]
    assert not check.passed and check.metadata["dangling_links"].value == 1
    assert "host:gone-host-07" in check.metadata["first_dangling"].value
    with duckdb.connect(str(sample_warehouse), read_only=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM ontology_links WHERE source_key = 'application_0_0001'"
        ).fetchall() == [(0,)]


def test_objects_follow_their_schema_and_backing_tables_on_their_own() -> None:
    """A new schema version, or a changed file table, requests objects, links and graph in one
    go; a table fed by Kafka is picked up on the next cron tick; else nothing is requested."""
    ontology = {"ontology_objects", "ontology_links", "ontology_graph"}
    # 30 s past the next 5-minute boundary: no cron tick falls in the first ticks of the test,
    # exactly one falls between the 25 s tick and the 5 min 1 s tick, whatever the clock says.
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t0 = now + timedelta(minutes=5 - now.minute % 5, seconds=30)
    cursor = None

    def tick(instance, at: datetime) -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(
            defs=defs(), instance=instance, cursor=cursor, evaluation_time=at
        )
        cursor = result.cursor
        return {k for k in ontology if result.get_num_requested(dg.AssetKey(k))}

    def happened(instance, *keys: str) -> None:
        for key in keys:
            instance.report_runless_asset_event(dg.AssetMaterialization(key))

    with dg.instance_for_test() as instance:
        tick(instance, t0)
        happened(instance, "ontology_schema")
        assert tick(instance, t0 + timedelta(seconds=5)) == ontology
        happened(instance, *ontology)  # as if the requested run had happened
        assert tick(instance, t0 + timedelta(seconds=10)) == set()
        happened(instance, "hosts")
        assert tick(instance, t0 + timedelta(seconds=15)) == ontology
        happened(instance, *ontology)
        assert tick(instance, t0 + timedelta(seconds=20)) == set()
        happened(instance, "spark_job_state")
        assert tick(instance, t0 + timedelta(seconds=25)) == set()
        assert tick(instance, t0 + timedelta(minutes=5, seconds=1)) == ontology


def test_the_yaml_sensor_requests_the_schema_when_the_files_change(folder: Path) -> None:
    resources = {"ontology": OntologyResource(folder=str(folder))}
    with dg.instance_for_test() as instance:
        first = ontology_changes(dg.build_sensor_context(instance=instance, resources=resources))
        assert [r.asset_selection for r in first.run_requests] == [[dg.AssetKey("ontology_schema")]]
        same = ontology_changes(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources)
        )
        assert "has not changed" in same.skip_message
        (folder / "links.yaml").write_text(
            (folder / "links.yaml").read_text() + "\n", encoding="utf-8"
        )
        changed = ontology_changes(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources)
        )
        assert len(changed.run_requests) == 1
