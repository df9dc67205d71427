"""Reading single objects live from their backing data, and evaluating functions on them.

Preconditions of actions are checked against what the backing tables say now, not against the
last materialization of `ontology_objects`: a Spark job that finished a minute ago must not be
killed because the objects table still says RUNNING.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import duckdb

from dagster_platform.lib.warehouse import quote
from dagster_platform.ontology.build import typed_select
from dagster_platform.ontology.loader import LoadedOntology
from dagster_platform.ontology.schema import PROPERTY_TYPES


class UnknownObjectType(KeyError):
    def __str__(self) -> str:
        return f"unknown object type {self.args[0]!r}"


class UnknownFunction(KeyError):
    def __str__(self) -> str:
        return f"unknown function {self.args[0]!r}"


def read_object(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, object_type: str, key: str
) -> dict[str, Any] | None:
    """The object's typed properties as its backing data has them now; None if it is absent."""
    obj = loaded.ontology.object_types.get(object_type)
    if obj is None:
        raise UnknownObjectType(object_type)
    cursor = conn.execute(
        f"SELECT * FROM ({typed_select(obj, loaded.folder)}) "
        f"WHERE CAST({quote(obj.primary_key)} AS VARCHAR) = ? LIMIT 1",
        [key],
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip(obj.properties, row, strict=True))


def evaluate_function(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, name: str, keys: Iterable[str]
) -> dict[str, Any]:
    """key → value of a function for the given objects (absent keys have no value)."""
    function = loaded.ontology.functions.get(name)
    if function is None:
        raise UnknownFunction(name)
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    rows = conn.execute(
        f"SELECT CAST(key AS VARCHAR), CAST(value AS {PROPERTY_TYPES[function.type]}) "
        f"FROM ({function.sql.strip().rstrip(';')}) WHERE CAST(key AS VARCHAR) IN "
        "(SELECT unnest($keys))",
        {"keys": wanted},
    ).fetchall()
    return {key: value for key, value in rows}


def with_functions(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    object_type: str,
    key: str,
    properties: dict[str, Any],
) -> dict[str, Any]:
    """The properties plus every function declared on the type, evaluated for this object."""
    values = dict(properties)
    for name in loaded.ontology.functions_of(object_type):
        values[name] = evaluate_function(conn, loaded, name, [key]).get(key)
    return values
