"""Objects, links, versions and queries on a real DuckDB file holding the sample data, and a
second domain added with YAML and data files only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from dagster_platform.ontology.build import (
    BuildError,
    build_links,
    build_objects,
    check_backing,
    record_build,
)
from dagster_platform.ontology.graph import analyse, load_graph
from dagster_platform.ontology.loader import LoadedOntology, load_ontology
from dagster_platform.ontology.query import NotFound, OntologyQuery
from dagster_platform.ontology.versioning import canonical, diff, version_of
from tests.support.state import ONTOLOGY_DIR

RUNNING_TOP = [
    "application_1794712500000_0488",
    "application_1794712500000_0492",
    "application_1794712500000_0497",
]


@pytest.fixture
def conn(sample_warehouse: Path):
    with duckdb.connect(str(sample_warehouse)) as connection:
        yield connection


@pytest.fixture
def loaded() -> LoadedOntology:
    return load_ontology(ONTOLOGY_DIR)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "ontology"
    shutil.copytree(ONTOLOGY_DIR, target)
    return target


def _build(conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology) -> None:
    assert check_backing(conn, loaded) == []
    assert build_objects(conn, loaded).published
    assert build_links(conn, loaded).published
    record_build(conn, version_of(loaded.ontology), 0, 0)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_objects_and_links_of_the_sample(conn, loaded) -> None:
    objects = build_objects(conn, loaded)
    assert objects.published
    assert objects.counts == {
        "cluster": 3,
        "host": 40,
        "spark_job": 207,
        "runbook": 16,
        "incident": 55,
        "alert": 0,
    }
    node_ids = [r[0] for r in conn.execute("SELECT node_id FROM ontology_objects").fetchall()]
    assert sorted(node_ids) == list(range(objects.total))
    (title,) = conn.execute(
        "SELECT title FROM ontology_objects WHERE object_type = 'host' "
        "AND object_key = 'etl-prod-worker-02'"
    ).fetchall()[0]
    assert title == "etl-prod-worker-02 (worker, etl-prod)"
    (typed,) = conn.execute(
        "SELECT vcores FROM object_host WHERE host_id = 'etl-prod-worker-02'"
    ).fetchall()[0]
    assert typed == 48

    links = build_links(conn, loaded)
    assert links.published and links.dangling == 0 and links.cardinality == {}
    assert links.counts["member_of"] == 40
    assert links.counts["runs_on"] == 207
    assert links.counts["affected_host"] > 55  # list property: one link per affected host


def test_a_mapping_to_a_missing_column_names_the_line(folder: Path, conn) -> None:
    _edit(
        folder / "objects.yaml",
        "      rack: {type: string}",
        "      rack: {type: string, column: rack_id}",
    )
    (problem,) = check_backing(conn, load_ontology(folder))
    assert problem.file == "objects.yaml" and problem.line is not None
    assert "rack_id" in (folder / "objects.yaml").read_text().splitlines()[problem.line - 1]
    assert problem.path == "object_types.host.properties.rack.column"
    assert "column 'rack_id' is not in the backing data" in problem.message


def test_a_missing_backing_table_and_a_failing_function(folder: Path, conn) -> None:
    _edit(folder / "objects.yaml", "backing: {table: runbooks}", "backing: {table: run_books}")
    _edit(folder / "functions.yaml", "FROM host_utilization_1m\n", "FROM host_utilisation_1m\n")
    loaded = load_ontology(folder)
    problems = {p.path: p.message for p in check_backing(conn, loaded)}
    assert "run_books" in problems["object_types.runbook.backing"]
    assert "the SELECT fails" in problems["functions.cpu_p95_1h.sql"]
    # before the sources are ingested the schema is still checked, minus missing tables
    assert check_backing(conn, loaded, missing_ok=True) == []


def test_dangling_links_are_listed_and_nothing_is_published(conn, loaded) -> None:
    _build(conn, loaded)
    before = conn.execute("SELECT count(*) FROM ontology_links").fetchall()
    conn.execute(
        "INSERT INTO hosts (host_id, cluster_id, role) VALUES ('ghost-host-01', 'ghost', 'worker')"
    )
    assert build_objects(conn, loaded).published
    report = build_links(conn, loaded)
    assert not report.published and report.dangling == 1
    assert report.dangling_sample == [
        {
            "link_type": "member_of",
            "source": "host:ghost-host-01",
            "target": "cluster:ghost",
            "missing": "target",
        }
    ]
    assert conn.execute("SELECT count(*) FROM ontology_links").fetchall() == before


def test_duplicate_or_missing_keys_keep_the_previous_objects(conn, loaded) -> None:
    _build(conn, loaded)
    conn.execute("INSERT INTO clusters SELECT * FROM clusters WHERE cluster_id = 'staging'")
    conn.execute("INSERT INTO runbooks (title) VALUES ('no id')")
    report = build_objects(conn, loaded)
    assert not report.published
    assert report.duplicate_keys == {"cluster": ["staging"]} and report.null_keys == {"runbook": 1}
    assert conn.execute("SELECT count(*) FROM object_cluster").fetchall() == [(3,)]


def test_a_value_that_does_not_fit_the_declared_type(folder: Path, conn) -> None:
    _edit(folder / "objects.yaml", "      rack: {type: string}", "      rack: {type: integer}")
    with pytest.raises(BuildError) as caught:
        build_objects(conn, load_ontology(folder))
    (problem,) = caught.value.problems
    assert problem.path == "object_types.host.properties.rack.type"
    assert "cannot be read as integer, e.g. 'r01'" in problem.message
    assert conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'object_cluster'"
    ).fetchall() == [(0,)]


def test_values_outside_allowed_are_reported(folder: Path, conn) -> None:
    _edit(folder / "objects.yaml", "allowed: [prod, staging, dev]", "allowed: [prod, dev]")
    report = build_objects(conn, load_ontology(folder))
    assert report.published and report.not_allowed == {"cluster.environment": ["staging"]}


def test_queries_on_the_sample(conn, loaded) -> None:
    _build(conn, loaded)
    q = OntologyQuery(conn, loaded)
    host = q.get_object("host", "etl-prod-worker-02")
    assert host["properties"]["cluster_id"] == "etl-prod" and "cpu_p95_1h" in host["properties"]

    members = q.neighbours("cluster", "staging", link_types=["member_of"])
    assert {n.object.key for n in members} == {
        r[0]
        for r in conn.execute("SELECT host_id FROM hosts WHERE cluster_id = 'staging'").fetchall()
    }
    assert all(n.depth == 1 and n.direction == "in" for n in members)
    two_hops = q.neighbours("host", "etl-prod-worker-02", depth=2)
    assert {n.depth for n in two_hops} == {1, 2}
    assert any(n.object.object_type == "runbook" and n.depth == 2 for n in two_hops)

    path = q.path(("host", "etl-prod-worker-02"), ("host", "analytics-prod-worker-02"))
    assert str(path[0][0]) == "host:etl-prod-worker-02"
    assert str(path[-1][0]) == "host:analytics-prod-worker-02"
    assert all(links for _, links in path[:-1])

    impacted = {str(n.object) for n in q.impact("cluster", "etl-prod")}
    assert "host:etl-prod-worker-02" in impacted
    assert f"spark_job:{RUNNING_TOP[0]}" in impacted
    assert not any(ref.startswith(("incident:", "runbook:")) for ref in impacted)

    suspects = q.root_cause("host", "etl-prod-worker-02", limit=3)
    assert [s.object.key for s in suspects] == RUNNING_TOP
    assert [s.rank_value for s in suspects] == [31.4, 23.8, 17.2]
    assert suspects[0].path == [
        "host:etl-prod-worker-02",
        "cluster:etl-prod",
        f"spark_job:{RUNNING_TOP[0]}",
    ]


def test_query_errors_are_clear(conn, loaded) -> None:
    _build(conn, loaded)
    q = OntologyQuery(conn, loaded)
    with pytest.raises(NotFound, match="no host 'nope'"):
        q.neighbours("host", "nope")
    with pytest.raises(NotFound, match="unknown object type 'hots'"):
        q.impact("hots", "etl-prod-worker-02")
    with pytest.raises(NotFound, match="unknown link type"):
        q.neighbours("host", "etl-prod-worker-02", link_types=["belongs_to"])
    with pytest.raises(ValueError, match="not runbook"):
        q.root_cause("runbook", "rb-high-cpu")


def test_streamed_state_and_samples_change_the_root_cause(conn, loaded) -> None:
    """A job that finished according to the stream drops out; recent samples re-rank."""
    conn.execute(
        "INSERT INTO spark_job_state (application_id, cluster_id, name, state, cpu_share_pct) "
        f"VALUES ('{RUNNING_TOP[0]}', 'etl-prod', 'user_feature_backfill', 'FINISHED', 0.0)"
    )
    conn.execute(
        "INSERT INTO spark_job_events (kafka_topic, kafka_partition, kafka_offset, event_id, ts, "
        'application_id, cluster_id, name, queue, "user", state, vcores, memory_gb, '
        "cpu_share_pct) VALUES ('raw-data-stream', 0, 1, 'e1', now(), "
        f"'{RUNNING_TOP[2]}', 'etl-prod', 'clickstream_sessionize', 'q', 'u', 'RUNNING', "
        "8, 8, 60.0)"
    )
    _build(conn, loaded)
    suspects = OntologyQuery(conn, loaded).root_cause("cluster", "etl-prod", limit=2)
    assert [s.object.key for s in suspects] == [RUNNING_TOP[2], RUNNING_TOP[1]]
    assert suspects[0].rank_value == 60.0


def test_versions_and_breaking_changes(folder: Path) -> None:
    first = load_ontology(folder).ontology
    assert diff(None, first).previous_version is None
    previous = json.loads(canonical(first))
    assert diff(previous, first).changes == []

    objects = folder / "objects.yaml"
    _edit(
        objects,
        "      rack: {type: string}\n",
        "      rack: {type: string}\n      zone: {type: string}\n",
    )
    added = diff(previous, load_ontology(folder).ontology)
    assert [str(c) for c in added.changes] == ["property_added host.zone (string)"]
    assert added.undeclared_breaking == [] and added.version != version_of(first)

    _edit(objects, "      rack: {type: string}\n", "")
    _edit(objects, " on rack {rack}", "")
    _edit(
        objects,
        "      vcores: {type: integer}\n      memory_gb",
        "      vcores: {type: float}\n      memory_gb",
    )
    breaking = diff(previous, load_ontology(folder).ontology)
    assert {str(c) for c in breaking.undeclared_breaking} == {
        "property_removed host.rack — BREAKING",
        "property_type_changed host.vcores (integer → float) — BREAKING",
    }

    (folder / "migrations.yaml").write_text(
        "migrations:\n"
        "  - {change: property_removed, object_type: host, property: rack, reason: racks go}\n"
        "  - {change: property_type_changed, object_type: host, property: vcores, reason: x}\n",
        encoding="utf-8",
    )
    declared = diff(previous, load_ontology(folder).ontology)
    assert declared.undeclared_breaking == []
    assert all(c.migrated for c in declared.changes if c.breaking)


def test_key_order_and_file_split_do_not_change_the_version(folder: Path) -> None:
    before = version_of(load_ontology(folder).ontology)
    functions = (folder / "functions.yaml").read_text(encoding="utf-8")
    (folder / "functions.yaml").unlink()
    root = functions.index("# From an alerting host")
    (folder / "a_functions.yaml").write_text(functions[:root], encoding="utf-8")
    (folder / "z_root_cause.yaml").write_text(functions[root:], encoding="utf-8")
    assert version_of(load_ontology(folder).ontology) == before


SECOND_DOMAIN = {
    "library.yaml": """
object_types:
  author:
    backing: {file: authors.csv}
    primary_key: author_id
    title: "{name}"
    properties:
      author_id: {type: string}
      name: {type: string}
  book:
    backing: {file: books.csv}
    primary_key: isbn
    title: "{title} ({year})"
    properties:
      isbn: {type: string}
      title: {type: string}
      year: {type: integer}
      author_id: {type: string}
  member:
    backing: {file: members.csv}
    primary_key: member_id
    title: "{member_id}"
    properties:
      member_id: {type: string}
link_types:
  written_by:
    source: book
    target: author
    cardinality: many_to_one
    derive: {property: author_id}
  borrowed:
    source: member
    target: book
    cardinality: many_to_many
    dependency: false
    derive: {file: loans.csv, source_column: member, target_column: isbn}
""",
    "authors.csv": "author_id,name\na1,Ursula K. Le Guin\na2,Han Kang\n",
    "books.csv": "isbn,title,year,author_id\nb1,The Dispossessed,1974,a1\n"
    "b2,The Lathe of Heaven,1971,a1\nb3,The Vegetarian,2007,a2\n",
    "members.csv": "member_id\nm1\nm2\n",
    "loans.csv": "member,isbn\nm1,b1\nm1,b3\nm2,b3\n",
}


def test_a_second_domain_needs_only_yaml_and_data(tmp_path: Path) -> None:
    folder = tmp_path / "library"
    folder.mkdir()
    for name, text in SECOND_DOMAIN.items():
        (folder / name).write_text(text.lstrip(), encoding="utf-8")
    loaded = load_ontology(folder)
    with duckdb.connect(str(tmp_path / "library.duckdb")) as conn:
        _build(conn, loaded)
        q = OntologyQuery(conn, loaded)
        assert q.get_object("book", "b3")["properties"] == {
            "isbn": "b3",
            "title": "The Vegetarian",
            "year": 2007,
            "author_id": "a2",
        }
        readers = q.neighbours("author", "a2", depth=2)
        assert {str(n.object) for n in readers} == {"book:b3", "member:m1", "member:m2"}
        assert [str(r) for r, _ in q.path(("member", "m2"), ("author", "a1"))] == [
            "member:m2",
            "book:b3",
            "member:m1",
            "book:b1",
            "author:a1",
        ]
        assert {str(n.object) for n in q.impact("author", "a1")} == {"book:b1", "book:b2"}
        analytics = analyse(load_graph(conn, {"written_by": True, "borrowed": False}))
        assert analytics.summary["nodes"] == 7 and analytics.summary["edges"] == 6
        assert analytics.summary["components"] == 1
