"""The ontology as a networkx graph, its analytics, and a picture of its most connected part.

Nodes are the dense `node_id`s of `ontology_objects` (ints keep a million-node graph small);
an edge u → v carries the link types between them as bits of `types`. Analytics that are
linear in the graph (degree, weakly connected components) cover every node. Betweenness and
communities are not linear, so above `core_nodes` nodes they are computed on the subgraph of
the most connected nodes, and the summary says so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import networkx as nx
import numpy as np
import pyarrow as pa
import scipy.sparse
import scipy.sparse.csgraph

from dagster_platform.lib import charts
from dagster_platform.lib.collector import collector_paused
from dagster_platform.lib.warehouse import table_exists
from dagster_platform.ontology.build import LINKS_TABLE, OBJECTS_TABLE

METRICS_TABLE = "ontology_graph_metrics"
Direction = Literal["out", "in", "both"]


@dataclass
class OntologyGraph:
    graph: nx.DiGraph
    type_names: list[str]
    node_type: np.ndarray  # index into type_names per node_id
    node_key: list[str]
    node_title: list[str]
    link_types: list[str]
    dependency_mask: int  # bits of the link types whose source depends on their target
    sources: np.ndarray  # the edges again, as arrays, for whole-graph analytics
    targets: np.ndarray
    _index: dict[tuple[str, str], int] | None = field(default=None, repr=False)

    @property
    def nodes(self) -> int:
        return self.graph.number_of_nodes()

    def index(self) -> dict[tuple[str, str], int]:
        """(type, key) → node id, built on first use (a second for a million objects)."""
        if self._index is None:
            with collector_paused():
                types = [self.type_names[t] for t in self.node_type.tolist()]
                pairs = zip(types, self.node_key, strict=True)
                self._index = {pair: i for i, pair in enumerate(pairs)}
        return self._index

    def node(self, object_type: str, key: str) -> int | None:
        return self.index().get((object_type, key))

    def ref(self, node: int) -> tuple[str, str]:
        return self.type_names[int(self.node_type[node])], self.node_key[node]

    def mask(self, link_types: Iterable[str] | None) -> int:
        if link_types is None:
            return (1 << len(self.link_types)) - 1
        names = list(link_types)
        unknown = sorted(set(names) - set(self.link_types))
        if unknown:
            raise KeyError(f"unknown link type(s): {', '.join(unknown)}")
        return sum(1 << self.link_types.index(name) for name in names)

    def names_of(self, bits: int) -> list[str]:
        return [name for i, name in enumerate(self.link_types) if bits >> i & 1]

    def steps(self, node: int, mask: int, direction: Direction) -> Iterator[tuple[int, int, str]]:
        """(neighbour, link bits, 'out'|'in') of one node through links in `mask`."""
        if direction in ("out", "both"):
            for other, data in self.graph._succ[node].items():
                if data["types"] & mask:
                    yield other, data["types"] & mask, "out"
        if direction in ("in", "both"):
            for other, data in self.graph._pred[node].items():
                if data["types"] & mask:
                    yield other, data["types"] & mask, "in"

    def bfs(
        self, start: int, mask: int, direction: Direction, max_depth: int
    ) -> dict[int, tuple[int, int, int, str]]:
        """node → (depth, parent, link bits, direction) of everything within `max_depth`."""
        seen: dict[int, tuple[int, int, int, str]] = {start: (0, -1, 0, "")}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            depth = seen[node][0]
            if depth == max_depth:
                continue
            for other, bits, way in self.steps(node, mask, direction):
                if other not in seen:
                    seen[other] = (depth + 1, node, bits, way)
                    queue.append(other)
        return seen


def load_graph(conn: duckdb.DuckDBPyConnection, link_types: dict[str, bool]) -> OntologyGraph:
    """Build the graph from `ontology_objects` and `ontology_links`; `link_types` maps each
    declared link type, in declaration order, to whether it is a dependency."""
    if not (table_exists(conn, OBJECTS_TABLE) and table_exists(conn, LINKS_TABLE)):
        raise LookupError("the ontology has not been built: materialize ontology_links first")
    type_names = [
        row[0]
        for row in conn.execute(
            f"SELECT DISTINCT object_type FROM {OBJECTS_TABLE} ORDER BY 1"
        ).fetchall()
    ]
    nodes = conn.execute(
        "SELECT CAST(list_position($types, object_type) - 1 AS INTEGER), object_key, title "
        f"FROM {OBJECTS_TABLE} ORDER BY node_id",
        {"types": type_names},
    ).fetchnumpy()
    node_type, node_key, node_title = nodes.values()
    edges = conn.execute(
        "SELECT source_node, target_node, CAST(bit_or(CAST(1 AS BIGINT) << link_type_id) "
        f"AS BIGINT) FROM {LINKS_TABLE} WHERE source_node IS NOT NULL AND target_node IS NOT "
        "NULL GROUP BY ALL"
    ).fetchnumpy()
    sources, targets, bits = edges.values()
    graph = nx.DiGraph()
    with collector_paused():
        graph.add_nodes_from(range(len(node_key)))
        graph.add_edges_from(
            zip(
                sources.tolist(),
                targets.tolist(),
                ({"types": b} for b in bits.tolist()),
                strict=True,
            )
        )
    names = list(link_types)
    return OntologyGraph(
        graph=graph,
        type_names=type_names,
        node_type=np.asarray(node_type),
        node_key=node_key.tolist(),
        node_title=node_title.tolist(),
        link_types=names,
        dependency_mask=sum(1 << i for i, name in enumerate(names) if link_types[name]),
        sources=np.asarray(sources, dtype=np.int64),
        targets=np.asarray(targets, dtype=np.int64),
    )


@dataclass
class GraphAnalytics:
    summary: dict[str, Any]
    metrics: pa.Table  # one row per node


def analyse(
    og: OntologyGraph,
    core_nodes: int = 5_000,
    exact_betweenness_up_to: int = 1_000,
    betweenness_samples: int = 256,
    seed: int = 7,
) -> GraphAnalytics:
    with collector_paused():
        return _analyse(og, core_nodes, exact_betweenness_up_to, betweenness_samples, seed)


def _analyse(
    og: OntologyGraph,
    core_nodes: int,
    exact_betweenness_up_to: int,
    betweenness_samples: int,
    seed: int,
) -> GraphAnalytics:
    n = og.nodes
    degree = np.bincount(og.sources, minlength=n) + np.bincount(og.targets, minlength=n)
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(og.sources), dtype=np.int8), (og.sources, og.targets)), shape=(n, n)
    )
    count, labels = scipy.sparse.csgraph.connected_components(
        adjacency, directed=True, connection="weak"
    )
    sizes = np.bincount(labels, minlength=count)
    by_size = np.argsort(-sizes, kind="stable")  # component 0 is the largest
    rank = np.empty(count, dtype=np.int64)
    rank[by_size] = np.arange(count)
    component = rank[labels] if n else np.zeros(0, dtype=np.int64)
    core = np.argsort(-degree, kind="stable")[: min(n, core_nodes)].tolist()
    sub = og.graph.subgraph(core).to_undirected()  # a small copy: views would walk the hubs
    samples = None if len(core) <= exact_betweenness_up_to else betweenness_samples
    betweenness_values = nx.betweenness_centrality(sub, k=samples, seed=seed)
    communities = nx.community.louvain_communities(sub, seed=seed) if len(core) else []
    communities = sorted(communities, key=len, reverse=True)
    betweenness = np.full(n, np.nan)
    for node, value in betweenness_values.items():
        betweenness[node] = value
    community = np.full(n, -1, dtype=np.int64)
    for i, members in enumerate(communities):
        community[list(members)] = i
    modularity = (
        nx.community.modularity(sub, communities) if sub.number_of_edges() and communities else None
    )
    metrics = pa.table(
        {
            "node_id": pa.array(np.arange(n, dtype=np.int64)),
            "object_type": pa.DictionaryArray.from_arrays(
                pa.array(og.node_type), pa.array(og.type_names)
            ).cast(pa.string()),
            "object_key": pa.array(og.node_key, pa.string()),
            "degree": pa.array(degree),
            "degree_centrality": pa.array(degree / max(n - 1, 1)),
            "betweenness": pa.array(betweenness, mask=np.isnan(betweenness)),
            "community": pa.array(community, mask=community < 0),
            "component": pa.array(component),
        }
    )
    top = np.argsort(-degree, kind="stable")[:10].tolist()
    summary = {
        "nodes": n,
        "edges": len(og.sources),
        "components": int(count),
        "largest_component": int(sizes.max()) if n else 0,
        "communities": len(communities),
        "modularity": round(modularity, 4) if modularity is not None else None,
        "analytics_scope": (
            "betweenness and communities over the whole graph"
            if len(core) == n
            else f"betweenness and communities over the {len(core):,} most connected of {n:,} nodes"
        ),
        "betweenness": "exact" if samples is None else f"sampled ({samples} pivots)",
        "most_connected": [
            {"object": ":".join(og.ref(node)), "degree": int(degree[node])} for node in top
        ],
        "most_between": [
            {"object": ":".join(og.ref(node)), "betweenness": round(value, 4)}
            for node, value in sorted(betweenness_values.items(), key=lambda kv: -kv[1])[:10]
        ],
    }
    return GraphAnalytics(summary, metrics)


def store_metrics(conn: duckdb.DuckDBPyConnection, analytics: GraphAnalytics) -> int:
    conn.register("_metrics", analytics.metrics)
    try:
        conn.execute(f"CREATE OR REPLACE TABLE {METRICS_TABLE} AS SELECT * FROM _metrics")
    finally:
        conn.unregister("_metrics")
    return analytics.metrics.num_rows


def picture(og: OntologyGraph, analytics: GraphAnalytics, nodes: int = 60, seed: int = 7) -> bytes:
    """PNG of the subgraph of the `nodes` most connected objects, coloured by object type."""
    degree = analytics.metrics.column("degree").to_numpy()
    chosen = np.argsort(-degree, kind="stable")[:nodes].tolist()
    sub = og.graph.subgraph(chosen).to_undirected(as_view=True)
    positions = nx.spring_layout(sub, seed=seed)
    with charts.figure(figsize=(11, 8), dpi=100) as (plt, drawn, axes):
        palette = plt.get_cmap("tab10")
        for index, name in enumerate(og.type_names):
            members = [node for node in sub if og.node_type[node] == index]
            if members:
                nx.draw_networkx_nodes(
                    sub,
                    positions,
                    nodelist=members,
                    node_size=[40 + 40 * float(degree[m]) ** 0.5 for m in members],
                    node_color=[palette(index % 10)],
                    label=name,
                    ax=axes,
                )
        nx.draw_networkx_edges(sub, positions, alpha=0.3, width=0.8, ax=axes)
        labels = {node: og.node_key[node][-24:] for node in chosen[:25]}
        nx.draw_networkx_labels(sub, positions, labels=labels, font_size=7, ax=axes)
        axes.set_title(f"The {len(chosen)} most connected of {og.nodes:,} ontology objects")
        axes.legend(loc="lower left", fontsize=8, markerscale=0.6)
        axes.axis("off")
        return charts.png(drawn, bbox_inches="tight")
