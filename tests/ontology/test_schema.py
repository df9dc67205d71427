"""Loading the ontology YAML: the shipped one is valid; every kind of mistake is reported with
its file, line and path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dagster_platform.ontology.loader import OntologyError, folder_fingerprint, load_ontology
from tests.support.state import ONTOLOGY_DIR


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "ontology"
    shutil.copytree(ONTOLOGY_DIR, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


def _problems(folder: Path) -> list[str]:
    with pytest.raises(OntologyError) as caught:
        load_ontology(folder)
    return [str(p) for p in caught.value.problems]


def test_the_shipped_ontology_is_valid() -> None:
    ontology = load_ontology(ONTOLOGY_DIR).ontology
    assert {"cluster", "host", "spark_job", "runbook", "incident", "alert"} <= set(
        ontology.object_types
    )
    assert ontology.link_types["member_of"].cardinality == "many_to_one"
    kill = ontology.action_types["kill_spark_job"]
    assert kill.approver_role == "sre" and kill.preconditions[0].property == "state"
    assert ontology.root_cause is not None and ontology.root_cause.candidate_type == "spark_job"


def test_unknown_property_type_names_file_line_and_path(folder: Path) -> None:
    objects = folder / "objects.yaml"
    _edit(objects, "      rack: {type: string}", "      rack: {type: strng}")
    (problem,) = _problems(folder)
    assert problem.startswith(f"objects.yaml:{_line_of(objects, 'rack: {type: strng}')}:")
    assert "object_types.host.properties.rack.type" in problem
    assert "unknown type 'strng'" in problem


def test_link_to_an_unknown_object_type(folder: Path) -> None:
    links = folder / "links.yaml"
    _edit(
        links,
        "    target: cluster\n    cardinality: many_to_one\n",
        "    target: clustr\n    cardinality: many_to_one\n",
    )
    (problem,) = _problems(folder)
    assert problem.startswith(f"links.yaml:{_line_of(links, 'target: clustr')}:")
    assert "link_types.member_of.target" in problem and "unknown object type 'clustr'" in problem


def test_duplicate_names_within_a_file_and_across_files(folder: Path) -> None:
    objects = folder / "objects.yaml"
    _edit(
        objects,
        "      rack: {type: string}\n",
        "      rack: {type: string}\n      rack: {type: string}\n",
    )
    (problem,) = _problems(folder)
    assert "objects.yaml" in problem and "rack" in problem and "duplicate" in problem.lower()

    shutil.copytree(ONTOLOGY_DIR, folder, dirs_exist_ok=True)
    (folder / "more.yaml").write_text(
        "object_types:\n  host:\n    backing: {table: hosts}\n    primary_key: host_id\n"
        "    title: '{host_id}'\n    properties:\n      host_id: {type: string}\n",
        encoding="utf-8",
    )
    (problem,) = _problems(folder)
    host_line = _line_of(folder / "objects.yaml", "  host:")
    assert problem == (
        f"objects.yaml:{host_line}: object_types.host: duplicate name: also declared in more.yaml:2"
    )


def test_precondition_on_an_unknown_property(folder: Path) -> None:
    actions = folder / "actions.yaml"
    _edit(actions, "{property: state, op: in", "{property: status, op: in")
    (problem,) = _problems(folder)
    assert problem.startswith(f"actions.yaml:{_line_of(actions, 'property: status')}:")
    assert "action_types.kill_spark_job.preconditions.0.property" in problem
    assert "unknown property 'status' of spark_job" in problem


def test_several_problems_are_all_reported_and_other_mistakes_are_named(folder: Path) -> None:
    objects = folder / "objects.yaml"
    _edit(objects, "    primary_key: host_id", "    primary_key: hostid")
    _edit(objects, 'title: "{host_id} ({role}, {cluster_id})"', 'title: "{host_id} ({rol})"')
    _edit(
        objects, "    backing: {table: runbooks}", "    backing: {table: runbooks}\n    colour: red"
    )
    assert _problems(folder) == [
        f"objects.yaml:{_line_of(objects, 'colour: red')}: object_types.runbook.colour: unknown key"
    ]
    # the extra key stops the shape check before references are looked at, so fix it alone
    _edit(objects, "\n    colour: red", "")
    text = "\n".join(_problems(folder))
    assert "primary key 'hostid' is not a property" in text
    assert "template refers to unknown 'rol'" in text


def test_broken_yaml_and_unknown_sections(folder: Path) -> None:
    (folder / "broken.yaml").write_text("object_types:\n  x: [unclosed\n", encoding="utf-8")
    (problem,) = _problems(folder)
    assert problem.startswith("broken.yaml:") and "not valid YAML" in problem

    (folder / "broken.yaml").write_text("objects:\n  x: 1\n", encoding="utf-8")
    (problem,) = _problems(folder)
    assert problem.startswith("broken.yaml:1: objects: unknown section")


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(OntologyError, match="does not exist"):
        load_ontology(tmp_path / "nothing")
    with pytest.raises(OntologyError, match=r"no \*\.yaml files"):
        load_ontology(tmp_path)


def test_fingerprint_follows_content(folder: Path) -> None:
    before = folder_fingerprint(folder)
    assert before == folder_fingerprint(folder)
    _edit(folder / "objects.yaml", "A machine of a cluster", "A server of a cluster")
    assert folder_fingerprint(folder) != before
