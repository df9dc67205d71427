"""Loading an ontology folder with errors that say where: file, line, path and what is wrong.

Every `*.yaml` file in the folder may declare any of the sections `object_types`,
`link_types`, `action_types`, `functions`, `root_cause` and `migrations`; the folder is one
ontology. ruamel.yaml keeps the line of every key, so a problem found by pydantic (shape) or
by the cross-reference checks here (meaning) is reported at the line that caused it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from dagster_platform.ontology.schema import Ontology, template_fields

MAPPING_SECTIONS = ("object_types", "link_types", "action_types", "functions")
SECTIONS = (*MAPPING_SECTIONS, "root_cause", "migrations")
Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class OntologyError(ValueError):
    """The ontology folder is invalid; `problems` lists every problem found, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the ontology:\n{lines}")


@dataclass
class SourceMap:
    """Where each top-level declaration came from, to turn a path into file and line."""

    folder: Path
    origins: dict[Path_, tuple[str, Any]] = field(default_factory=dict)
    key_lines: dict[Path_, int] = field(default_factory=dict)

    def locate(self, path: Path_) -> tuple[str, int | None]:
        for depth in (2, 1):
            origin = self.origins.get(tuple(path[:depth]))
            if origin is not None:
                file, node = origin
                return file, _line(node, path[depth:]) or _line(node, ())
        return "(ontology)", None

    def problem(self, path: Path_, message: str) -> Problem:
        file, line = self.locate(path)
        return Problem(file, line, ".".join(str(p) for p in path), message)


def _line(node: Any, rest: Path_) -> int | None:
    """1-based line of the key (or item) at `rest` below `node`, the deepest that exists."""
    line = getattr(getattr(node, "lc", None), "line", None)
    found = None if line is None else line + 1
    for step in rest:
        if isinstance(node, CommentedMap) and step in node:
            found = node.lc.key(step)[0] + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            found = node.lc.item(step)[0] + 1
            node = node[step]
        else:
            break
    return found


@dataclass(frozen=True)
class LoadedOntology:
    ontology: Ontology
    sources: SourceMap

    @property
    def folder(self) -> Path:
        return self.sources.folder


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _read_files(folder: Path) -> tuple[dict[str, Any], SourceMap, list[Problem]]:
    if not folder.is_dir():
        raise OntologyError([Problem(str(folder), None, "", "ontology folder does not exist")])
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if not files:
        raise OntologyError([Problem(str(folder), None, "", "no *.yaml files in the folder")])
    yaml = YAML(typ="rt")
    merged: dict[str, Any] = {}
    sources = SourceMap(folder)
    problems: list[Problem] = []
    for path in files:
        name = path.name
        try:
            document = yaml.load(path.read_text(encoding="utf-8"))
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            problems.append(Problem(name, line, "", f"not valid YAML: {exc.problem or exc}"))
            continue
        except UnicodeDecodeError as exc:
            problems.append(Problem(name, None, "", f"not UTF-8 text: {exc}"))
            continue
        if document is None:
            continue
        if not isinstance(document, CommentedMap):
            problems.append(Problem(name, 1, "", "a file must be a mapping of sections"))
            continue
        for section, value in document.items():
            line = document.lc.key(section)[0] + 1
            if section not in SECTIONS:
                problems.append(
                    Problem(name, line, str(section), f"unknown section (expected {SECTIONS})")
                )
            elif section in MAPPING_SECTIONS:
                if not isinstance(value, CommentedMap):
                    problems.append(Problem(name, line, section, "must be a mapping of names"))
                    continue
                target = merged.setdefault(section, {})
                for item, spec in value.items():
                    key = (section, str(item))
                    item_line = value.lc.key(item)[0] + 1
                    if key in sources.origins:
                        first, _ = sources.origins[key]
                        problems.append(
                            Problem(
                                name,
                                item_line,
                                f"{section}.{item}",
                                f"duplicate name: also declared in "
                                f"{first}:{sources.key_lines[key]}",
                            )
                        )
                        continue
                    target[str(item)] = _plain(spec)
                    sources.origins[key] = (name, spec)
                    sources.key_lines[key] = item_line
            elif section == "root_cause":
                if ("root_cause",) in sources.origins:
                    first, _ = sources.origins[("root_cause",)]
                    problems.append(Problem(name, line, section, f"also declared in {first}"))
                    continue
                merged["root_cause"] = _plain(value)
                sources.origins[("root_cause",)] = (name, value)
            else:
                items = value if isinstance(value, CommentedSeq) else []
                if not isinstance(value, CommentedSeq):
                    problems.append(Problem(name, line, section, "must be a list"))
                start = len(merged.setdefault("migrations", []))
                for i, item in enumerate(items):
                    merged["migrations"].append(_plain(item))
                    sources.origins[("migrations", start + i)] = (name, item)
    return merged, sources, problems


def _shape_problems(error: ValidationError, sources: SourceMap) -> list[Problem]:
    problems = []
    for detail in error.errors():
        loc = tuple(detail["loc"])
        message = detail["msg"]
        if detail["type"] == "literal_error" and loc and loc[-1] == "type":
            message = f"unknown type {detail['input']!r}: {message.removeprefix('Input ')}"
        elif detail["type"] == "extra_forbidden":
            message = "unknown key"
        elif detail["type"] == "string_pattern_mismatch":
            message = f"invalid name {detail['input']!r}: lower case, digits and _ only"
        elif "input" in detail and detail["type"] != "missing":
            message = f"{message} (got {detail['input']!r})"
        problems.append(sources.problem(loc, message))
    return problems


def _reference_problems(ontology: Ontology, sources: SourceMap) -> Iterator[Problem]:
    """What pydantic cannot see: names that must refer to something declared elsewhere."""
    objects = ontology.object_types
    for name, obj in objects.items():
        where = ("object_types", name)
        if obj.primary_key not in obj.properties:
            yield sources.problem(
                (*where, "primary_key"), f"primary key {obj.primary_key!r} is not a property"
            )
        for key in ("title", "description_template"):
            template = getattr(obj, key)
            try:
                fields = template_fields(template) if template else []
            except ValueError as exc:
                yield sources.problem((*where, key), f"invalid template: {exc}")
                continue
            for unknown in sorted(set(fields) - set(obj.properties)):
                yield sources.problem((*where, key), f"template refers to unknown {unknown!r}")
    for name, link in ontology.link_types.items():
        where = ("link_types", name)
        for end in ("source", "target"):
            if getattr(link, end) not in objects:
                yield sources.problem(
                    (*where, end), f"link to unknown object type {getattr(link, end)!r}"
                )
        holder = link.source if link.derive.on == "source" else link.target
        prop = link.derive.property
        if prop and holder in objects and prop not in objects[holder].properties:
            yield sources.problem(
                (*where, "derive", "property"),
                f"{holder} has no property {prop!r}",
            )
    for name, action in ontology.action_types.items():
        where = ("action_types", name)
        if action.target not in objects:
            yield sources.problem((*where, "target"), f"unknown object type {action.target!r}")
            continue
        target = objects[action.target]
        for i, condition in enumerate(action.preconditions):
            if condition.property not in target.properties:
                yield sources.problem(
                    (*where, "preconditions", i, "property"),
                    f"precondition on unknown property {condition.property!r} of {action.target}",
                )
        if action.effect.cluster_property not in target.properties:
            yield sources.problem(
                (*where, "effect", "cluster_property"),
                f"{action.target} has no property {action.effect.cluster_property!r}",
            )
    for name, function in ontology.functions.items():
        where = ("functions", name)
        owner = objects.get(function.object_type)
        if owner is None:
            yield sources.problem(
                (*where, "object_type"), f"unknown object type {function.object_type!r}"
            )
        elif name in owner.properties:
            yield sources.problem(where, f"{function.object_type} already has a property {name!r}")
    rc = ontology.root_cause
    if rc is not None:
        for i, start in enumerate(rc.start_types):
            if start not in objects:
                yield sources.problem(
                    ("root_cause", "start_types", i), f"unknown object type {start!r}"
                )
        candidate = objects.get(rc.candidate_type)
        if candidate is None:
            yield sources.problem(
                ("root_cause", "candidate_type"), f"unknown object type {rc.candidate_type!r}"
            )
        else:
            rankable = {*candidate.properties, *ontology.functions_of(rc.candidate_type)}
            if rc.rank_by not in rankable:
                yield sources.problem(
                    ("root_cause", "rank_by"),
                    f"{rc.rank_by!r} is neither a property nor a function of {rc.candidate_type}",
                )
            for i, condition in enumerate(rc.where):
                if condition.property not in candidate.properties:
                    yield sources.problem(
                        ("root_cause", "where", i, "property"),
                        f"unknown property {condition.property!r} of {rc.candidate_type}",
                    )
    needs = {
        "object_type_removed": ("object_type",),
        "property_removed": ("object_type", "property"),
        "property_type_changed": ("object_type", "property"),
        "link_type_removed": ("link_type",),
        "action_type_removed": ("action_type",),
    }
    for i, migration in enumerate(ontology.migrations):
        for key in needs[migration.change]:
            if not getattr(migration, key):
                yield sources.problem(("migrations", i), f"{migration.change} needs {key}")


def load_ontology(folder: Path) -> LoadedOntology:
    """Parse and check an ontology folder; raise :class:`OntologyError` listing every problem."""
    merged, sources, problems = _read_files(folder)
    if problems:
        raise OntologyError(problems)
    try:
        ontology = Ontology.model_validate(merged)
    except ValidationError as exc:
        raise OntologyError(_shape_problems(exc, sources)) from None
    problems = list(_reference_problems(ontology, sources))
    if problems:
        raise OntologyError(problems)
    return LoadedOntology(ontology, sources)


def folder_fingerprint(folder: Path) -> str | None:
    """Hash of the names and contents of the folder's YAML files; None if there are none."""
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")) if folder.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
