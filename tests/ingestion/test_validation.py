"""The GX suites on small files: each bad input names its rows."""

from pathlib import Path

import pytest

from dagster_platform.ingestion.readers import read_source
from dagster_platform.ingestion.sources import HOSTS, INCIDENTS, SPARK_JOBS
from dagster_platform.ingestion.validation import validate

HOSTS_HEADER = (
    "host_id,cluster_id,role,rack,ip_address,vcores,memory_gb,disk_tb,os,status,"
    "cpu_usage_pct,memory_usage_pct,disk_usage_pct\n"
)


def host_row(host: str = "h1", cluster: str = "etl-prod", cpu: str = "50.0", vcores="32") -> str:
    return (
        f"{host},{cluster},worker,r01,10.0.0.1,{vcores},128,12.0,Rocky Linux 9.4,healthy,"
        f"{cpu},40.0,30.0\n"
    )


def clusters_lookup(table: str, key: str) -> set[str] | None:
    return {"clusters": {"etl-prod", "staging"}, "hosts": {"h1", "h2"}}.get(table)


def run(tmp_path: Path, spec, text: str, lookup=clusters_lookup):
    (tmp_path / spec.path).write_text(text)
    return validate(read_source(spec, tmp_path), lookup)


def outcome(validation, name):
    return next(o for o in validation.outcomes if o.name == name)


def test_good_file_passes_every_suite(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1") + host_row("h2"))
    assert result.passed, [o.summary() for o in result.outcomes]
    assert [o.name for o in result.outcomes] == [
        "columns_and_types",
        "keys",
        "values",
        "references",
    ]
    assert result.typed is not None and result.typed.height == 2
    assert str(result.typed.schema["cpu_usage_pct"]) == "Float64"


def test_missing_column(tmp_path: Path) -> None:
    header = HOSTS_HEADER.replace(",disk_usage_pct", "")
    row = host_row().rsplit(",", 1)[0] + "\n"
    result = run(tmp_path, HOSTS, header + row)
    assert not result.passed and result.typed is None
    schema = outcome(result, "columns_and_types")
    assert "missing columns ['disk_usage_pct'] in hosts.csv" in schema.summary()


def test_wrong_type_names_the_row(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1") + host_row("h2", vcores="many"))
    schema = outcome(result, "columns_and_types")
    assert not schema.passed
    assert [(r.location, r.column, r.value) for r in schema.rows] == [
        ("hosts.csv line 3", "vcores", "many")
    ]


def test_duplicate_ids(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1") + host_row("h2") + host_row("h1"))
    keys = outcome(result, "keys")
    assert {r.location for r in keys.rows} == {"hosts.csv line 2", "hosts.csv line 4"}
    assert all(r.column == "host_id" for r in keys.rows)


def test_null_in_a_required_column(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1", cluster=""))
    keys = outcome(result, "keys")
    assert [(r.location, r.column) for r in keys.rows] == [("hosts.csv line 2", "cluster_id")]


def test_usage_out_of_range(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1", cpu="130.5") + host_row("h2"))
    values = outcome(result, "values")
    assert [(r.location, r.column, r.value) for r in values.rows] == [
        ("hosts.csv line 2", "cpu_usage_pct", "130.5")
    ]


def test_unknown_cluster(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1") + host_row("h2", cluster="nope"))
    references = outcome(result, "references")
    assert [(r.location, r.column, r.value) for r in references.rows] == [
        ("hosts.csv line 3", "cluster_id", "nope")
    ]


def test_reference_to_a_table_never_loaded(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER + host_row("h1"), lookup=lambda t, k: None)
    assert "table clusters has not been loaded" in outcome(result, "references").summary()


def test_header_only_file(tmp_path: Path) -> None:
    result = run(tmp_path, HOSTS, HOSTS_HEADER)
    assert "has a header but no rows" in outcome(result, "columns_and_types").summary()


JOBS_HEADER = (
    "application_id,cluster_id,name,queue,user,state,start_time,end_time,vcores,memory_gb,"
    "cpu_share_pct,driver_host\n"
)


def test_end_before_start(tmp_path: Path) -> None:
    rows = (
        "app_1,etl-prod,a,root.etl,svc,FINISHED,2026-11-20T01:00:00Z,2026-11-20T02:00:00Z,4,8,1,h1\n"
        "app_2,etl-prod,b,root.etl,svc,FINISHED,2026-11-20T03:00:00Z,2026-11-20T02:00:00Z,4,8,1,h1\n"
        "app_3,etl-prod,c,root.etl,svc,RUNNING,2026-11-20T03:00:00Z,,4,8,1,h2\n"
    )
    values = outcome(run(tmp_path, SPARK_JOBS, JOBS_HEADER + rows), "values")
    assert [(r.location, r.column) for r in values.rows] == [("spark_jobs.csv line 3", "end_time")]


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [('["h1", "h9"]', "h9"), ('"h1"', None)],
)
def test_list_references_check_each_element(tmp_path: Path, hosts: str, expected) -> None:
    line = (
        '{"incident_id": "INC-1", "cluster_id": "etl-prod", "severity": "sev2", '
        '"opened_at": "2026-11-19T01:00:00Z", "resolved_at": "2026-11-19T02:00:00Z", '
        '"title": "t", "symptoms": "s", "affected_hosts": ' + hosts + ', "affected_jobs": [], '
        '"root_cause": "r", "resolution": "x", "runbook_id": null, "language": "en", '
        '"tags": ["cpu"]}\n'
    )
    result = run(tmp_path, INCIDENTS, line)
    if expected is None:  # a bare string is not a list: a type failure on that line
        schema = outcome(result, "columns_and_types")
        assert [(r.location, r.column) for r in schema.rows] == [
            ("incidents.jsonl line 1", "affected_hosts")
        ]
    else:
        references = outcome(result, "references")
        assert [r.value for r in references.rows] == [expected]
