"""The query API agents and people use: objects, neighbours, paths, impact sets, root causes.

Graph questions run on an in-memory :class:`OntologyGraph` that is loaded once per process
and reloaded only when the ontology has been rebuilt since (a 2-hop question on a million
objects then costs microseconds, not a DuckDB join); object details come from the warehouse.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from dagster_platform.lib.warehouse import table_exists
from dagster_platform.ontology.build import BUILDS_TABLE, OBJECTS_TABLE
from dagster_platform.ontology.graph import Direction, OntologyGraph, load_graph
from dagster_platform.ontology.loader import LoadedOntology
from dagster_platform.ontology.objects import evaluate_function, read_object, with_functions


class NotFound(LookupError):
    """An object, link type or path that does not exist; the message says which."""


@dataclass(frozen=True)
class ObjectRef:
    object_type: str
    key: str
    title: str | None = None

    def __str__(self) -> str:
        return f"{self.object_type}:{self.key}"


@dataclass(frozen=True)
class Neighbour:
    object: ObjectRef
    depth: int
    via: ObjectRef | None  # the object it was reached from
    link_types: list[str]
    direction: str  # "out": via → object follows the link's direction; "in": against it


@dataclass(frozen=True)
class Suspect:
    object: ObjectRef
    rank_value: Any
    depth: int
    path: list[str]
    properties: dict[str, Any] = field(default_factory=dict)


def parse_ref(text: str) -> tuple[str, str]:
    """'type:key' → (type, key); keys may contain ':'."""
    object_type, sep, key = text.partition(":")
    if not sep or not object_type or not key:
        raise ValueError(f"expected TYPE:KEY, got {text!r}")
    return object_type, key


_cache: dict[str, tuple[Any, OntologyGraph]] = {}
_cache_lock = threading.Lock()


def _build_marker(conn: duckdb.DuckDBPyConnection) -> Any:
    if not table_exists(conn, BUILDS_TABLE):
        return None
    return conn.execute(f"SELECT max(build_id) FROM {BUILDS_TABLE}").fetchall()[0][0]


def graph_for(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, cache_key: str | None = None
) -> OntologyGraph:
    """The graph of the last build, cached per process under `cache_key` (the warehouse)."""
    marker = _build_marker(conn)
    link_types = {name: link.dependency for name, link in loaded.ontology.link_types.items()}
    if cache_key is None:
        return load_graph(conn, link_types)
    with _cache_lock:
        cached = _cache.get(cache_key)
        if cached is not None and cached[0] == marker and marker is not None:
            return cached[1]
        graph = load_graph(conn, link_types)
        graph.index()  # built once here rather than in the first question
        _cache[cache_key] = (marker, graph)
        return graph


class OntologyQuery:
    """Questions about one built ontology in one warehouse."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        loaded: LoadedOntology,
        graph: OntologyGraph | None = None,
        cache_key: str | Path | None = None,
    ):
        self.conn = conn
        self.loaded = loaded
        key = str(cache_key) if cache_key is not None else None
        self.graph = graph if graph is not None else graph_for(conn, loaded, key)

    def _node(self, object_type: str, key: str) -> int:
        if object_type not in self.loaded.ontology.object_types:
            raise NotFound(f"unknown object type {object_type!r}")
        node = self.graph.node(object_type, key)
        if node is None:
            raise NotFound(f"no {object_type} {key!r} in the ontology")
        return node

    def _refs(self, nodes: list[int]) -> dict[int, ObjectRef]:
        g = self.graph
        return {
            node: ObjectRef(
                g.type_names[int(g.node_type[node])], g.node_key[node], g.node_title[node]
            )
            for node in nodes
        }

    def get_object(self, object_type: str, key: str, functions: bool = True) -> dict[str, Any]:
        """The object as its backing data has it now, with its functions evaluated."""
        try:
            properties = read_object(self.conn, self.loaded, object_type, key)
        except KeyError as exc:
            raise NotFound(str(exc)) from None
        if properties is None:
            raise NotFound(f"no {object_type} {key!r} in the backing data")
        if functions:
            properties = with_functions(self.conn, self.loaded, object_type, key, properties)
        node = self.graph.node(object_type, key)
        title = self._refs([node])[node].title if node is not None else None
        return {"object_type": object_type, "key": key, "title": title, "properties": properties}

    def neighbours(
        self,
        object_type: str,
        key: str,
        link_types: list[str] | None = None,
        depth: int = 1,
        direction: Direction = "both",
    ) -> list[Neighbour]:
        """Objects within `depth` links, nearest first."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        start = self._node(object_type, key)
        try:
            mask = self.graph.mask(link_types)
        except KeyError as exc:
            raise NotFound(exc.args[0]) from None
        reached = self.graph.bfs(start, mask, direction, depth)
        del reached[start]
        ordered = sorted(reached.items(), key=lambda kv: (kv[1][0], kv[0]))
        refs = self._refs([start, *(node for node, _ in ordered)])
        return [
            Neighbour(refs[node], d, refs[parent], self.graph.names_of(bits), way)
            for node, (d, parent, bits, way) in ordered
        ]

    def path(
        self, source: tuple[str, str], target: tuple[str, str], link_types: list[str] | None = None
    ) -> list[tuple[ObjectRef, list[str]]]:
        """A shortest path between two objects, links followed either way: each object with
        the link types that lead to the next one."""
        a, b = self._node(*source), self._node(*target)
        try:
            mask = self.graph.mask(link_types)
        except KeyError as exc:
            raise NotFound(exc.args[0]) from None
        reached = self.graph.bfs(a, mask, "both", max_depth=self.graph.nodes)
        if b not in reached:
            raise NotFound(f"no path between {source[0]}:{source[1]} and {target[0]}:{target[1]}")
        chain = [b]
        while chain[-1] != a:
            chain.append(reached[chain[-1]][1])
        chain.reverse()
        refs = self._refs(chain)
        return [
            (
                refs[node],
                self.graph.names_of(reached[chain[i + 1]][2]) if i + 1 < len(chain) else [],
            )
            for i, node in enumerate(chain)
        ]

    def impact(self, object_type: str, key: str, max_depth: int = 10) -> list[Neighbour]:
        """What depends on the object, directly or through others (links declared as
        dependencies, followed from target back to source)."""
        start = self._node(object_type, key)
        reached = self.graph.bfs(start, self.graph.dependency_mask, "in", max_depth)
        del reached[start]
        ordered = sorted(reached.items(), key=lambda kv: (kv[1][0], kv[0]))
        refs = self._refs([start, *(node for node, _ in ordered)])
        return [
            Neighbour(refs[node], d, refs[parent], self.graph.names_of(bits), way)
            for node, (d, parent, bits, way) in ordered
        ]

    def root_cause(self, object_type: str, key: str, limit: int = 10) -> list[Suspect]:
        """From an alerting object, the declared candidates within reach, filtered and ranked
        by the declared function or property, highest first."""
        rc = self.loaded.ontology.root_cause
        if rc is None:
            raise NotFound("the ontology declares no root_cause")
        if object_type not in rc.start_types:
            raise ValueError(
                f"root cause starts from {', '.join(rc.start_types)}, not {object_type}"
            )
        start = self._node(object_type, key)
        reached = self.graph.bfs(start, self.graph.mask(None), "both", rc.max_depth)
        candidate_index = (
            self.graph.type_names.index(rc.candidate_type)
            if (rc.candidate_type in self.graph.type_names)
            else -1
        )
        candidates = [n for n in reached if self.graph.node_type[n] == candidate_index]
        if not candidates:
            return []
        properties = self._properties(candidates)
        keys = {node: self.graph.node_key[node] for node in candidates}
        if rc.rank_by in self.loaded.ontology.functions:
            values = evaluate_function(self.conn, self.loaded, rc.rank_by, keys.values())
            rank = {node: values.get(k) for node, k in keys.items()}
        else:
            rank = {node: properties[node].get(rc.rank_by) for node in candidates}
        kept = [
            node
            for node in candidates
            if all(c.holds(properties[node].get(c.property)) for c in rc.where)
            and rank[node] is not None
        ]
        kept.sort(key=lambda node: (-rank[node], keys[node]))
        kept = kept[:limit]
        paths = {node: self._chain(reached, start, node) for node in kept}
        refs = self._refs(sorted({n for chain in paths.values() for n in chain}))
        return [
            Suspect(
                refs[node],
                rank[node],
                reached[node][0],
                [str(refs[n]) for n in paths[node]],
                properties[node],
            )
            for node in kept
        ]

    @staticmethod
    def _chain(reached: dict[int, tuple[int, int, int, str]], start: int, node: int) -> list[int]:
        chain = [node]
        while chain[-1] != start:
            chain.append(reached[chain[-1]][1])
        return chain[::-1]

    def _properties(self, nodes: list[int]) -> dict[int, dict[str, Any]]:
        rows = self.conn.execute(
            f"SELECT node_id, properties FROM {OBJECTS_TABLE} WHERE node_id IN "
            "(SELECT unnest($nodes))",
            {"nodes": nodes},
        ).fetchall()
        return {node: json.loads(text) for node, text in rows}
