"""`dagster-platform ontology ...`: validate the YAML and ask the built ontology questions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from dagster_platform.cli.common import JsonOption, fail
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.ontology.graph import Direction
from dagster_platform.ontology.loader import OntologyError, load_ontology
from dagster_platform.ontology.query import OntologyQuery, parse_ref
from dagster_platform.ontology.versioning import version_of
from dagster_platform.settings import get_settings

ontology_app = typer.Typer(
    help="The ontology: validate its YAML, look up objects, neighbours, paths, impact sets "
    "and root causes.",
    no_args_is_help=True,
)


@contextmanager
def _query() -> Iterator[OntologyQuery]:
    settings = get_settings()
    try:
        loaded = load_ontology(settings.ontology_dir)
    except OntologyError as exc:
        raise fail(str(exc)) from None
    if not settings.warehouse_path.exists():
        raise fail(f"no warehouse at {settings.warehouse_path}: run the ingestion first")
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        try:
            yield OntologyQuery(conn, loaded)
        except LookupError as exc:
            raise fail(str(exc).strip("'\"")) from None
        except ValueError as exc:
            raise fail(str(exc)) from None


def _ref(text: str) -> tuple[str, str]:
    try:
        return parse_ref(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _print(value: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(value, ensure_ascii=False, default=str, indent=2))
    else:
        typer.echo("\n".join(lines) if lines else "(none)")


@ontology_app.command()
def validate(
    folder: Annotated[
        Path | None, typer.Argument(help="Default: DAGSTER_PLATFORM_ONTOLOGY.")
    ] = None,
) -> None:
    """Check the ontology YAML; print every problem with its file and line."""
    folder = folder or get_settings().ontology_dir
    try:
        loaded = load_ontology(folder)
    except OntologyError as exc:
        raise fail(str(exc)) from None
    o = loaded.ontology
    typer.echo(
        f"{folder}: valid, version {version_of(o)}: {len(o.object_types)} object types, "
        f"{len(o.link_types)} link types, {len(o.action_types)} action types, "
        f"{len(o.functions)} functions"
    )


@ontology_app.command("object")
def object_(ref: Annotated[str, typer.Argument(help="TYPE:KEY")], as_json: JsonOption = False):
    """An object as its backing data has it now, with its functions evaluated."""
    with _query() as q:
        found = q.get_object(*_ref(ref))
    lines = [f"{found['object_type']}:{found['key']}  {found['title'] or ''}"]
    lines += [f"  {name}: {value}" for name, value in found["properties"].items()]
    _print(found, as_json, lines)


@ontology_app.command()
def neighbours(
    ref: Annotated[str, typer.Argument(help="TYPE:KEY")],
    link_type: Annotated[list[str] | None, typer.Option(help="Only these link types.")] = None,
    depth: Annotated[int, typer.Option(min=1, max=6)] = 1,
    direction: Annotated[str, typer.Option(help="out, in or both")] = "both",
    as_json: JsonOption = False,
) -> None:
    """Objects within DEPTH links of an object."""
    if direction not in ("out", "in", "both"):
        raise typer.BadParameter("direction must be out, in or both")
    dir_: Direction = direction  # type: ignore[assignment]
    with _query() as q:
        found = q.neighbours(*_ref(ref), link_types=link_type, depth=depth, direction=dir_)
    lines = [
        f"{'  ' * (n.depth - 1)}{n.object}  [{', '.join(n.link_types)} {n.direction} of "
        f"{n.via}]  {n.object.title or ''}"
        for n in found
    ]
    _print([asdict(n) for n in found], as_json, lines)


@ontology_app.command()
def path(
    source: Annotated[str, typer.Argument(help="TYPE:KEY")],
    target: Annotated[str, typer.Argument(help="TYPE:KEY")],
    link_type: Annotated[list[str] | None, typer.Option(help="Only these link types.")] = None,
    as_json: JsonOption = False,
) -> None:
    """A shortest path between two objects."""
    with _query() as q:
        found = q.path(_ref(source), _ref(target), link_types=link_type)
    lines = [f"{ref}" + (f"  --{'/'.join(links)}--" if links else "") for ref, links in found]
    _print([{"object": asdict(r), "link_types": links} for r, links in found], as_json, lines)


@ontology_app.command()
def impact(ref: Annotated[str, typer.Argument(help="TYPE:KEY")], as_json: JsonOption = False):
    """What depends on an object, directly or through others."""
    with _query() as q:
        found = q.impact(*_ref(ref))
    lines = [f"{'  ' * (n.depth - 1)}{n.object}  ({', '.join(n.link_types)})" for n in found]
    _print([asdict(n) for n in found], as_json, lines)


@ontology_app.command("root-cause")
def root_cause(
    ref: Annotated[str, typer.Argument(help="TYPE:KEY of an alerting host, cluster or alert")],
    limit: Annotated[int, typer.Option(min=1)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Suspects ranked by the ontology's root_cause declaration (e.g. Spark jobs by CPU)."""
    with _query() as q:
        found = q.root_cause(*_ref(ref), limit=limit)
        rank_by = q.loaded.ontology.root_cause.rank_by  # type: ignore[union-attr]
    lines = [
        f"{i}. {s.object}  {rank_by}={s.rank_value}  {s.object.title or ''}  via "
        + " → ".join(s.path)
        for i, s in enumerate(found, 1)
    ]
    _print([asdict(s) for s in found], as_json, lines)
