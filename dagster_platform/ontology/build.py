"""Turning the declared ontology and its backing data into typed tables, in DuckDB SQL.

Objects: one typed table per object type (`object_<type>`) and `ontology_objects`, one row per
object with a dense `node_id`, its title, description and properties as JSON. Links:
`ontology_links`, one row per distinct (link type, source, target), with the node ids of both
ends — NULL where an end does not exist, which the dangling-link check lists. Everything is
set-based SQL, so a million objects cost seconds, not a Python loop.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from dagster_platform.lib.warehouse import quote
from dagster_platform.ontology.loader import LoadedOntology, Problem
from dagster_platform.ontology.schema import (
    PROPERTY_TYPES,
    Backing,
    LinkDerivation,
    LinkType,
    ObjectType,
    Ontology,
)

OBJECTS_TABLE = "ontology_objects"
LINKS_TABLE = "ontology_links"
BUILDS_TABLE = "ontology_builds"
MAX_LINK_TYPES = 62  # link types of an edge are kept as bits of one BIGINT in the graph


def object_table(object_type: str) -> str:
    return f"object_{object_type}"


def relation_sql(relation: Backing | LinkDerivation, folder: Path) -> str:
    """A FROM-able expression for a backing table, data file or SELECT."""
    if relation.table:
        return quote(relation.table)
    if relation.sql:
        return f"({relation.sql.strip().rstrip(';')})"
    assert relation.file is not None
    path = (folder / relation.file).resolve()
    literal = "'" + str(path).replace("'", "''") + "'"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return f"read_parquet({literal})"
    if suffix in (".json", ".jsonl", ".ndjson"):
        return f"read_json_auto({literal})"
    return f"read_csv_auto({literal}, header = true)"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def template_sql(template: str, obj: ObjectType) -> str:
    """A template such as '{name} ({cluster_id})' as a SQL expression; a format spec
    ('{cpu:.1f}') is handed to DuckDB's fmt-style `format`."""
    parts = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        if literal:
            parts.append(_sql_literal(literal))
        if name is None:
            continue
        column = quote(name)
        if obj.properties[name].type == "string_list":
            value = f"array_to_string({column}, ', ')"
        elif spec:
            value = f"format({_sql_literal('{:' + spec + '}')}, {column})"
        else:
            value = f"CAST({column} AS VARCHAR)"
        parts.append(f"coalesce({value}, '')")
    return f"concat({', '.join(parts)})" if parts else "''"


def _describe(conn: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    rows = conn.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {row[0]: row[1] for row in rows}


def _missing_relation(exc: duckdb.Error) -> str:
    first = str(exc).splitlines()[0]
    return f"backing data cannot be read: {first}"


def check_backing(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, missing_ok: bool = False
) -> list[Problem]:
    """Every backing relation exists and has the columns the mapping names; every function's
    SELECT runs and returns `key` and `value`. With `missing_ok`, a table that does not exist
    yet (its source not ingested) is not a problem; a wrong column in one that does is."""
    ontology, sources, folder = loaded.ontology, loaded.sources, loaded.folder
    problems: list[Problem] = []
    for name, obj in ontology.object_types.items():
        where = ("object_types", name)
        try:
            columns = _describe(conn, relation_sql(obj.backing, folder))
        except duckdb.CatalogException as exc:
            if not missing_ok:
                problems.append(sources.problem((*where, "backing"), _missing_relation(exc)))
            continue
        except duckdb.Error as exc:
            problems.append(sources.problem((*where, "backing"), _missing_relation(exc)))
            continue
        for prop, spec in obj.properties.items():
            column = obj.column_of(prop)
            if column not in columns:
                at = (*where, "properties", prop, "column" if spec.column else "type")
                problems.append(
                    sources.problem(
                        at,
                        f"column {column!r} is not in the backing data "
                        f"(it has {', '.join(sorted(columns))})",
                    )
                )
    for name, link in ontology.link_types.items():
        derive = link.derive
        if derive.property:
            continue
        where = ("link_types", name, "derive")
        try:
            columns = _describe(conn, relation_sql(derive, folder))
        except duckdb.CatalogException as exc:
            if not missing_ok:
                problems.append(sources.problem(where, _missing_relation(exc)))
            continue
        except duckdb.Error as exc:
            problems.append(sources.problem(where, _missing_relation(exc)))
            continue
        for key in ("source_column", "target_column"):
            if getattr(derive, key) not in columns:
                problems.append(
                    sources.problem(
                        (*where, key), f"column {getattr(derive, key)!r} is not in the data"
                    )
                )
    for name, function in ontology.functions.items():
        where = ("functions", name, "sql")
        try:
            columns = _describe(conn, f"({function.sql.strip().rstrip(';')})")
        except duckdb.CatalogException as exc:
            if not missing_ok:
                problems.append(
                    sources.problem(where, f"the SELECT fails: {str(exc).splitlines()[0]}")
                )
            continue
        except duckdb.Error as exc:
            problems.append(sources.problem(where, f"the SELECT fails: {str(exc).splitlines()[0]}"))
            continue
        if not {"key", "value"} <= set(columns):
            problems.append(
                sources.problem(where, f"must return columns key and value, not {list(columns)}")
            )
    return problems


@dataclass
class ObjectsBuild:
    counts: dict[str, int]
    duplicate_keys: dict[str, list[str]]  # type → sample of keys that occur more than once
    null_keys: dict[str, int]
    not_allowed: dict[str, list[str]]  # "type.property" → sample of values outside `allowed`

    published: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def blocking(self) -> bool:
        """Keys that are missing or not unique make objects ambiguous: nothing is published."""
        return bool(self.duplicate_keys or self.null_keys)


def typed_select(obj: ObjectType, folder: Path) -> str:
    """The backing rows as the object type's typed properties."""
    columns = ", ".join(
        f"CAST({quote(obj.column_of(p))} AS {PROPERTY_TYPES[spec.type]}) AS {quote(p)}"
        for p, spec in obj.properties.items()
    )
    return f"SELECT {columns} FROM {relation_sql(obj.backing, folder)}"


def _cast_problems(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, name: str, obj: ObjectType
) -> list[Problem]:
    """Which properties could not be cast, with an example value each (after a failed CAST)."""
    problems = []
    relation = relation_sql(obj.backing, loaded.folder)
    for prop, spec in obj.properties.items():
        column, sql_type = quote(obj.column_of(prop)), PROPERTY_TYPES[spec.type]
        rows = conn.execute(
            f"SELECT CAST({column} AS VARCHAR) FROM {relation} "
            f"WHERE {column} IS NOT NULL AND TRY_CAST({column} AS {sql_type}) IS NULL LIMIT 3"
        ).fetchall()
        if rows:
            examples = ", ".join(repr(r[0]) for r in rows)
            problems.append(
                loaded.sources.problem(
                    ("object_types", name, "properties", prop, "type"),
                    f"backing values cannot be read as {spec.type}, e.g. {examples}",
                )
            )
    return problems


class BuildError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def build_objects(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, sample: int = 20
) -> ObjectsBuild:
    """Replace the object tables and `ontology_objects` in one transaction — only when every
    object has a unique key; otherwise the previous tables stay and the report says why."""
    ontology = loaded.ontology
    report = ObjectsBuild({}, {}, {}, {})
    casting: tuple[str, ObjectType] | None = None
    conn.execute("BEGIN TRANSACTION")
    try:
        unions = []
        for name, obj in ontology.object_types.items():
            table = quote(object_table(name))
            casting = (name, obj)
            conn.execute(f"CREATE OR REPLACE TABLE {table} AS {typed_select(obj, loaded.folder)}")
            casting = None
            key = quote(obj.primary_key)
            (report.counts[name],) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            (nulls,) = conn.execute(f"SELECT count(*) FROM {table} WHERE {key} IS NULL").fetchone()
            if nulls:
                report.null_keys[name] = int(nulls)
            duplicates = conn.execute(
                f"SELECT CAST({key} AS VARCHAR) FROM {table} WHERE {key} IS NOT NULL "
                f"GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT {sample}"
            ).fetchall()
            if duplicates:
                report.duplicate_keys[name] = [row[0] for row in duplicates]
            for prop, spec in obj.properties.items():
                if spec.allowed is None:
                    continue
                allowed = ", ".join(
                    _sql_literal(str(v)) if isinstance(v, str) else str(v) for v in spec.allowed
                )
                bad = conn.execute(
                    f"SELECT DISTINCT CAST({quote(prop)} AS VARCHAR) FROM {table} "
                    f"WHERE {quote(prop)} IS NOT NULL AND {quote(prop)} NOT IN ({allowed}) "
                    f"ORDER BY 1 LIMIT {sample}"
                ).fetchall()
                if bad:
                    report.not_allowed[f"{name}.{prop}"] = [row[0] for row in bad]
            props = ", ".join(f"{quote(p)} := {quote(p)}" for p in obj.properties)
            description = (
                template_sql(obj.description_template, obj) if obj.description_template else "NULL"
            )
            unions.append(
                f"SELECT {_sql_literal(name)} AS object_type, "
                f"CAST({key} AS VARCHAR) AS object_key, "
                f"{template_sql(obj.title, obj)} AS title, {description} AS description, "
                f"to_json(struct_pack({props})) AS properties FROM {table} WHERE {key} IS NOT NULL"
            )
        body = " UNION ALL ".join(unions) or (
            "SELECT NULL::VARCHAR AS object_type, NULL::VARCHAR AS object_key, NULL::VARCHAR AS "
            "title, NULL::VARCHAR AS description, NULL::JSON AS properties WHERE false"
        )
        conn.execute(
            f"CREATE OR REPLACE TABLE {OBJECTS_TABLE} AS SELECT "
            "CAST(row_number() OVER (ORDER BY object_type, object_key) - 1 AS BIGINT) AS node_id, "
            f"* FROM ({body})"
        )
        report.published = not report.blocking
        conn.execute("COMMIT" if report.published else "ROLLBACK")
    except Exception as exc:
        conn.execute("ROLLBACK")
        if casting is not None and isinstance(exc, duckdb.ConversionException):
            raise BuildError(_cast_problems(conn, loaded, *casting)) from None
        raise
    return report


def _link_pairs(link: LinkType, ontology: Ontology, folder: Path) -> str:
    """SELECT source_key, target_key for one link type, both as text."""
    derive = link.derive
    if derive.property is None:
        return (
            f"SELECT CAST({quote(derive.source_column or '')} AS VARCHAR) AS source_key, "
            f"CAST({quote(derive.target_column or '')} AS VARCHAR) AS target_key "
            f"FROM {relation_sql(derive, folder)}"
        )
    holder_type = link.source if derive.on == "source" else link.target
    holder = ontology.object_types[holder_type]
    own_key = f"CAST({quote(holder.primary_key)} AS VARCHAR)"
    other = quote(derive.property)
    if holder.properties[derive.property].type == "string_list":
        other = f"unnest({other})"
    other = f"CAST({other} AS VARCHAR)"
    own, far = (
        ("source_key", "target_key") if derive.on == "source" else ("target_key", "source_key")
    )
    return (
        f"SELECT * FROM (SELECT {own_key} AS {own}, {other} AS {far} "
        f"FROM {quote(object_table(holder_type))})"
    )


@dataclass
class LinksBuild:
    counts: dict[str, int]
    dangling: int
    dangling_sample: list[dict[str, Any]]
    cardinality: dict[str, list[str]]
    published: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def build_links(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, sample: int = 50
) -> LinksBuild:
    """Replace `ontology_links` in one transaction — only when no link has an end that is not
    an object; otherwise the previous table stays and the report lists the dangling links."""
    ontology = loaded.ontology
    if len(ontology.link_types) > MAX_LINK_TYPES:
        raise BuildError(
            [Problem("(ontology)", None, "link_types", f"at most {MAX_LINK_TYPES} link types")]
        )
    selects = [
        f"SELECT {_sql_literal(name)} AS link_type, {ids} AS link_type_id, "
        f"{_sql_literal(link.source)} AS source_type, source_key, "
        f"{_sql_literal(link.target)} AS target_type, target_key "
        f"FROM ({_link_pairs(link, ontology, loaded.folder)}) "
        "WHERE source_key IS NOT NULL AND target_key IS NOT NULL"
        for ids, (name, link) in enumerate(ontology.link_types.items())
    ]
    body = " UNION ALL ".join(selects) or (
        "SELECT NULL::VARCHAR AS link_type, NULL::INTEGER AS link_type_id, NULL::VARCHAR AS "
        "source_type, NULL::VARCHAR AS source_key, NULL::VARCHAR AS target_type, "
        "NULL::VARCHAR AS target_key WHERE false"
    )
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(
            f"CREATE OR REPLACE TABLE {LINKS_TABLE} AS "
            "SELECT l.link_type, CAST(l.link_type_id AS INTEGER) AS link_type_id, l.source_type, "
            "l.source_key, l.target_type, l.target_key, s.node_id AS source_node, "
            f"t.node_id AS target_node FROM (SELECT DISTINCT * FROM ({body})) l "
            f"LEFT JOIN {OBJECTS_TABLE} s ON s.object_type = l.source_type "
            "AND s.object_key = l.source_key "
            f"LEFT JOIN {OBJECTS_TABLE} t ON t.object_type = l.target_type "
            "AND t.object_key = l.target_key"
        )
        rows = conn.execute(f"SELECT link_type, count(*) FROM {LINKS_TABLE} GROUP BY 1").fetchall()
        counts = dict.fromkeys(ontology.link_types, 0)
        counts.update({name: int(n) for name, n in rows})
        dangling, dangling_sample = dangling_links(conn, sample)
        report = LinksBuild(
            counts, dangling, dangling_sample, cardinality_violations(conn, ontology)
        )
        report.published = dangling == 0
        conn.execute("COMMIT" if report.published else "ROLLBACK")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return report


def dangling_links(
    conn: duckdb.DuckDBPyConnection, limit: int = 50
) -> tuple[int, list[dict[str, Any]]]:
    """How many links have an end that is not an object, and the first `limit` of them."""
    where = "source_node IS NULL OR target_node IS NULL"
    (total,) = conn.execute(f"SELECT count(*) FROM {LINKS_TABLE} WHERE {where}").fetchone()
    rows = conn.execute(
        "SELECT link_type, source_type, source_key, target_type, target_key, "
        "source_node IS NULL AS missing_source FROM "
        f"{LINKS_TABLE} WHERE {where} ORDER BY ALL LIMIT {limit}"
    ).fetchall()
    return int(total), [
        {
            "link_type": r[0],
            "source": f"{r[1]}:{r[2]}",
            "target": f"{r[3]}:{r[4]}",
            "missing": "source" if r[5] else "target",
        }
        for r in rows
    ]


def cardinality_violations(
    conn: duckdb.DuckDBPyConnection, ontology: Ontology, limit: int = 20
) -> dict[str, list[str]]:
    """Per link type whose data breaks its declared cardinality, sample offending objects."""
    found: dict[str, list[str]] = {}
    for name, link in ontology.link_types.items():
        ends = []
        if link.cardinality in ("many_to_one", "one_to_one"):
            ends.append(("source", "target"))  # a source with more than one target
        if link.cardinality in ("one_to_many", "one_to_one"):
            ends.append(("target", "source"))
        for one, many in ends:
            rows = conn.execute(
                f"SELECT {one}_type || ':' || {one}_key || ' has ' || count(*) || ' ' || "
                f"'{many}s' FROM {LINKS_TABLE} WHERE link_type = ? GROUP BY {one}_type, {one}_key "
                f"HAVING count(*) > 1 ORDER BY 1 LIMIT {limit}",
                [name],
            ).fetchall()
            if rows:
                found.setdefault(name, []).extend(r[0] for r in rows)
    return found


def record_build(conn: duckdb.DuckDBPyConnection, version: str, objects: int, links: int) -> int:
    """Note a finished build, so that processes holding a graph in memory know to reload it."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {BUILDS_TABLE} (build_id BIGINT PRIMARY KEY, "
        "version VARCHAR NOT NULL, built_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, "
        "objects BIGINT NOT NULL, links BIGINT NOT NULL)"
    )
    rows = conn.execute(
        f"INSERT INTO {BUILDS_TABLE} (build_id, version, objects, links) "
        f"SELECT coalesce(max(build_id), 0) + 1, ?, ?, ? FROM {BUILDS_TABLE} RETURNING build_id",
        [version, objects, links],
    ).fetchall()
    return int(rows[0][0])


def _tables_in(sql: str) -> set[str]:
    """Base tables a SELECT reads, from DuckDB's own parse tree (nothing is bound or run)."""
    (tree,) = duckdb.connect().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0]
    found: set[str] = set()
    pending: list[Any] = [json.loads(tree)]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE":
                found.add(node["table_name"])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def backing_tables(ontology: Ontology) -> set[str]:
    """The warehouse tables objects and links are read from (functions are read live)."""
    tables: set[str] = set()
    relations: list[Backing | LinkDerivation] = [o.backing for o in ontology.object_types.values()]
    relations += [link.derive for link in ontology.link_types.values() if not link.derive.property]
    for relation in relations:
        if relation.table:
            tables.add(relation.table)
        elif relation.sql:
            tables |= _tables_in(relation.sql)
    return tables
