"""The ontology group: the declared schema, its objects and links as tables, and the graph.

`ontology_schema` validates the YAML (and its mapping onto the warehouse) and publishes a new
version only when no undeclared breaking change is in it. Objects, links and the graph follow
their backing tables on their own (declarative automation); each publishes only data that
passed its blocking checks, so the previous good tables stay when a build is refused.
"""

from pathlib import Path

import dagster as dg
import polars as pl

from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.events import STREAM_FAMILIES
from dagster_platform.kafka.rollups import ROLLUPS
from dagster_platform.kafka.tables import ensure_all_tables
from dagster_platform.lib.markdown import markdown_table, png_markdown
from dagster_platform.ontology.build import (
    OBJECTS_TABLE,
    BuildError,
    backing_tables,
    build_links,
    build_objects,
    check_backing,
    record_build,
)
from dagster_platform.ontology.graph import analyse, load_graph, picture, store_metrics
from dagster_platform.ontology.loader import LoadedOntology, OntologyError, Problem, load_ontology
from dagster_platform.ontology.versioning import diff, last_published, publish, version_of
from dagster_platform.settings import Settings
from resources import WAREHOUSE_POOL, OntologyResource, StateResource, WarehouseResource

GROUP = "ontology"
OWNERS = ["team:data-platform"]


STREAM_TABLES = {t.table for family in STREAM_FAMILIES for t in family.tables} | {
    rollup.name for rollup in ROLLUPS
}


def _platform_tables() -> set[str]:
    return {spec.name for spec in SOURCES} | STREAM_TABLES


def backing_deps(ontology_dir: Path) -> list[str]:
    """Asset keys of the platform tables the declared ontology reads: the lineage of
    `ontology_objects`. An ontology that does not load stops the definitions with its problems
    (file and line), rather than drawing a lineage without them."""
    try:
        loaded = load_ontology(ontology_dir)
    except (OntologyError, OSError) as exc:
        exc.add_note(f"while drawing the lineage of ontology_objects from {ontology_dir}")
        raise
    return sorted(backing_tables(loaded.ontology) & _platform_tables())


def _eager(streamed: list[str]) -> dg.AutomationCondition:
    """Eager on the schema and file tables, ignoring updates of the `streamed` ones."""
    return (
        dg.AutomationCondition.eager()
        .without(~dg.AutomationCondition.any_deps_missing())
        .replace(
            "any_deps_updated",
            dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets(*streamed)),
        )
    )


def _follow(streamed: list[str], cron: str) -> dg.AutomationCondition:
    """Eager on the schema and file tables; tables fed by Kafka change every few seconds, so
    their updates are picked up on a cron tick instead of rebuilding the ontology each time."""
    if not streamed:
        return FOLLOW_ONTOLOGY
    periodic = (
        dg.AutomationCondition.cron_tick_passed(cron)
        & dg.AutomationCondition.any_deps_updated()
        .allow(dg.AssetSelection.assets(*streamed))
        .since_last_handled()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
    )
    return (_eager(streamed) | periodic).with_label("eager, streamed tables on a cron tick")


FOLLOW_ONTOLOGY = _eager([]).with_label("eager_allow_missing")

OBJECT_CHECKS = [
    dg.AssetCheckSpec(
        "unique_keys",
        asset="ontology_objects",
        blocking=True,
        description="Every object has a primary key, and no key occurs twice in a type.",
    ),
    dg.AssetCheckSpec(
        "allowed_values",
        asset="ontology_objects",
        description="Properties declared with `allowed` hold only those values.",
    ),
]


def _problems_md(problems: list[Problem]) -> dg.MetadataValue:
    return dg.MetadataValue.md("\n".join(f"- `{p}`" for p in problems) or "none")


def _prepare(conn) -> None:
    """The stream and rollup tables exist (empty) before anything maps onto them."""
    ensure_all_tables(conn)
    for rollup in ROLLUPS:
        conn.execute(rollup.create)


def _load(ontology: OntologyResource) -> LoadedOntology:
    try:
        return ontology.load()
    except OntologyError as exc:
        raise dg.Failure(
            description=str(exc), metadata={"problems": _problems_md(exc.problems)}
        ) from None


@dg.asset(
    group_name=GROUP,
    kinds={"yaml", "duckdb"},
    owners=OWNERS,
    pool=WAREHOUSE_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            "valid",
            asset="ontology_schema",
            blocking=True,
            description="The YAML parses, every name it refers to is declared, and every "
            "mapped column exists in the backing data.",
        ),
        dg.AssetCheckSpec(
            "no_breaking_change",
            asset="ontology_schema",
            blocking=True,
            description="No property, object, link or action type removed and no property "
            "type changed since the last version, unless declared as a migration.",
        ),
    ],
)
def ontology_schema(
    context: dg.AssetExecutionContext, ontology: OntologyResource, warehouse: WarehouseResource
):
    """The declared ontology (`data/ontology/*.yaml`), validated and versioned by content
    hash; the metadata says what changed since the last published version."""
    try:
        loaded = ontology.load()
        problems: list[Problem] = []
    except OntologyError as exc:
        loaded, problems = None, exc.problems
    if loaded is not None:
        with warehouse.get_connection() as conn:
            _prepare(conn)
            problems = check_backing(conn, loaded, missing_ok=True)
    yield dg.AssetCheckResult(
        check_name="valid",
        passed=not problems,
        metadata={"problems": _problems_md(problems), "folder": str(ontology.path)},
    )
    if loaded is None or problems:
        raise dg.Failure(
            description=f"{len(problems)} problem(s) in the ontology:\n"
            + "\n".join(str(p) for p in problems)
        )
    with warehouse.get_connection() as conn:
        changes = diff(last_published(conn), loaded.ontology)
        breaking = changes.undeclared_breaking
        yield dg.AssetCheckResult(
            check_name="no_breaking_change",
            passed=not breaking,
            metadata={
                "breaking": dg.MetadataValue.md("\n".join(f"- {c}" for c in breaking) or "none"),
                "hint": "declare each intended breaking change under `migrations:`",
            },
        )
        if breaking:
            raise dg.Failure(
                description="breaking change(s) not declared as migrations: "
                + "; ".join(str(c) for c in breaking)
            )
        published = publish(conn, loaded.ontology, changes)
    o = loaded.ontology
    types = pl.DataFrame(
        [
            {
                "object_type": name,
                "backing": obj.backing.table or obj.backing.file or "SELECT",
                "properties": len(obj.properties),
                "functions": len(o.functions_of(name)),
            }
            for name, obj in o.object_types.items()
        ]
    )
    context.log.info(f"ontology version {changes.version} ({'new' if published else 'same'})")
    yield dg.MaterializeResult(
        metadata={
            "version": changes.version,
            "changes": dg.MetadataValue.md(changes.markdown()),
            "object_types": dg.MetadataValue.md(markdown_table(types)),
            "link_types": dg.MetadataValue.int(len(o.link_types)),
            "action_types": dg.MetadataValue.int(len(o.action_types)),
            "functions": dg.MetadataValue.int(len(o.functions)),
        },
        data_version=dg.DataVersion(changes.version),
    )


def ontology_objects(
    context: dg.AssetExecutionContext, ontology: OntologyResource, warehouse: WarehouseResource
):
    """One typed table per object type (`object_<type>`) and `ontology_objects`: one row per
    object with its node id, title, description and properties."""
    loaded = _load(ontology)
    with warehouse.get_connection() as conn:
        _prepare(conn)
        problems = check_backing(conn, loaded)
        if problems:
            raise dg.Failure(
                description="the ontology does not map onto the warehouse:\n"
                + "\n".join(str(p) for p in problems),
                metadata={"problems": _problems_md(problems)},
            )
        try:
            report = build_objects(conn, loaded)
        except BuildError as exc:
            raise dg.Failure(
                description=str(exc), metadata={"problems": _problems_md(exc.problems)}
            ) from None
        preview = conn.sql(
            f"SELECT node_id, object_type, object_key, title FROM {OBJECTS_TABLE} "
            "ORDER BY object_type, node_id LIMIT 12"
        ).pl()
    keys = {
        **{t: f"{n} objects without a key" for t, n in report.null_keys.items()},
        **{t: "duplicate keys: " + ", ".join(k) for t, k in report.duplicate_keys.items()},
    }
    yield dg.AssetCheckResult(
        check_name="unique_keys",
        passed=not report.blocking,
        metadata={"problems": dg.MetadataValue.json(keys)},
    )
    yield dg.AssetCheckResult(
        check_name="allowed_values",
        passed=not report.not_allowed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"values_not_allowed": dg.MetadataValue.json(report.not_allowed)},
    )
    if not report.published:
        raise dg.Failure(description=f"objects not published: {keys}")
    context.log.info(f"{report.total} objects in {len(report.counts)} types")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(report.total),
            "objects_per_type": dg.MetadataValue.json(report.counts),
            "preview": dg.MetadataValue.md(markdown_table(preview)),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    owners=OWNERS,
    deps=["ontology_objects"],
    pool=WAREHOUSE_POOL,
    automation_condition=FOLLOW_ONTOLOGY,
    check_specs=[
        dg.AssetCheckSpec(
            "no_dangling_links",
            asset="ontology_links",
            blocking=True,
            description="Both ends of every link are objects of the declared types.",
        ),
        dg.AssetCheckSpec(
            "cardinality",
            asset="ontology_links",
            description="Links keep their declared cardinality (e.g. a host in one cluster).",
        ),
    ],
)
def ontology_links(
    context: dg.AssetExecutionContext, ontology: OntologyResource, warehouse: WarehouseResource
):
    """`ontology_links`: one row per (link type, source, target), derived from the backing data
    as each link type declares, with the node ids of both ends."""
    loaded = _load(ontology)
    with warehouse.get_connection() as conn:
        report = build_links(conn, loaded)
        if report.published:
            (objects,) = conn.execute(f"SELECT count(*) FROM {OBJECTS_TABLE}").fetchall()[0]
            record_build(conn, version_of(loaded.ontology), int(objects), report.total)
    yield dg.AssetCheckResult(
        check_name="no_dangling_links",
        passed=report.dangling == 0,
        metadata={
            "dangling_links": dg.MetadataValue.int(report.dangling),
            "first_dangling": dg.MetadataValue.md(
                markdown_table(pl.DataFrame(report.dangling_sample)) if report.dangling else "none"
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name="cardinality",
        passed=not report.cardinality,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"violations": dg.MetadataValue.json(report.cardinality)},
    )
    if not report.published:
        raise dg.Failure(
            description=f"{report.dangling} link(s) point at objects that do not exist; "
            "the previous links stay published."
        )
    context.log.info(f"{report.total} links in {len(report.counts)} types")
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(report.total),
            "links_per_type": dg.MetadataValue.json(report.counts),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"networkx", "duckdb"},
    owners=OWNERS,
    deps=["ontology_links"],
    pool=WAREHOUSE_POOL,
    automation_condition=FOLLOW_ONTOLOGY,
)
def ontology_graph(
    context: dg.AssetExecutionContext,
    ontology: OntologyResource,
    warehouse: WarehouseResource,
    state: StateResource,
) -> dg.MaterializeResult:
    """The ontology as a networkx graph: degree and betweenness centrality, communities and
    components per object in `ontology_graph_metrics`, and a picture of its most connected
    part."""
    loaded = _load(ontology)
    link_types = {name: link.dependency for name, link in loaded.ontology.link_types.items()}
    with warehouse.get_connection() as conn:
        graph = load_graph(conn, link_types)
    analytics = analyse(graph)
    image = picture(graph, analytics)
    with warehouse.get_connection() as conn:
        rows = store_metrics(conn, analytics)
    path = state.path / "ontology_graph.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image)
    summary = analytics.summary
    context.log.info(
        f"graph: {summary['nodes']} nodes, {summary['edges']} edges, "
        f"{summary['components']} components, {summary['communities']} communities"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "nodes": dg.MetadataValue.int(summary["nodes"]),
            "edges": dg.MetadataValue.int(summary["edges"]),
            "components": dg.MetadataValue.int(summary["components"]),
            "largest_component": dg.MetadataValue.int(summary["largest_component"]),
            "communities": dg.MetadataValue.int(summary["communities"]),
            "modularity": dg.MetadataValue.float(summary["modularity"] or 0.0),
            "analytics_scope": summary["analytics_scope"],
            "betweenness": summary["betweenness"],
            "most_connected": dg.MetadataValue.md(
                markdown_table(pl.DataFrame(summary["most_connected"]))
            ),
            "most_between": dg.MetadataValue.md(
                markdown_table(pl.DataFrame(summary["most_between"]))
                if summary["most_between"]
                else "none"
            ),
            "picture": dg.MetadataValue.md(png_markdown("ontology graph", image)),
            "picture_path": dg.MetadataValue.path(str(path)),
        }
    )


def ontology_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The group as the declared ontology draws it: `ontology_objects` depends on the tables
    the YAML maps (read when the definitions load, so a broken YAML fails them loudly) and
    follows the streamed ones on the configured cron."""
    backing = backing_deps(settings.ontology_dir)
    streamed = sorted(set(backing) & STREAM_TABLES)
    objects = dg.asset(
        group_name=GROUP,
        kinds={"duckdb"},
        owners=OWNERS,
        deps=["ontology_schema", *backing],
        pool=WAREHOUSE_POOL,
        automation_condition=_follow(streamed, settings.ontology_refresh_cron),
        check_specs=OBJECT_CHECKS,
    )(ontology_objects)
    return [ontology_schema, objects, ontology_links, ontology_graph]
