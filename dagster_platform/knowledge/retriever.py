"""Hybrid retrieval: vector search and BM25 fused by reciprocal rank, with metadata filters.

Vector search finds paraphrases ("the disk is full" for "No space left on device"); BM25 finds
the exact identifiers and commands people paste (host names, `hdfs dfsadmin -safemode`), which
embeddings blur. Reciprocal rank fusion needs no score calibration between the two: each list
contributes 1 / (k + rank), so a chunk ranked well by both rises to the top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dagster_platform.knowledge.documents import Chunk
from dagster_platform.knowledge.lexical import LexicalIndex

Mode = Literal["vector", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("vector", "lexical", "hybrid")
RRF_K = 60
OVERFETCH = 10  # a filtered vector search first asks for this many times the hits, unfiltered
FILTER_FIELDS = ("source", "object_type", "cluster_id", "doc_id")

VectorSearch = Callable[[str, int, dict | None], list[tuple[str, float]]]


@dataclass(frozen=True)
class Filters:
    """Metadata a hit must match; None matches anything."""

    source: str | None = None
    object_type: str | None = None
    cluster_id: str | None = None
    doc_id: str | None = None

    def items(self) -> list[tuple[str, str]]:
        return [(f, v) for f in FILTER_FIELDS if (v := getattr(self, f)) is not None]

    def chroma_where(self) -> dict | None:
        """The same filter as a chroma `where` clause."""
        clauses = [{field: value} for field, value in self.items()]
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    vector_rank: int | None
    lexical_rank: int | None

    @property
    def doc_id(self) -> str:
        return self.chunk.doc_id

    def citation(self) -> str:
        return f"[{self.chunk.doc_id}] {self.chunk.heading}"


class HybridRetriever:
    """Searches one chunk set both ways. The chunk list, the lexical index and the vector
    collection must hold the same chunks: the assets build all three from `document_chunks`."""

    def __init__(
        self,
        chunks: Sequence[Chunk],
        lexical: LexicalIndex,
        vector_search: VectorSearch,
        *,
        rrf_k: int = RRF_K,
        candidates: int = 50,
    ):
        self.chunks = {c.chunk_id: c for c in chunks}
        self.lexical = lexical
        self.vector_search = vector_search
        self.rrf_k = rrf_k
        self.candidates = candidates
        # one array per filterable field, aligned with the lexical index's rows
        self._columns = {
            f: np.array([getattr(self.chunks[i], f) or "" for i in lexical.ids], dtype=object)
            for f in FILTER_FIELDS
        }

    def search(
        self, query: str, k: int = 5, filters: Filters | None = None, mode: Mode = "hybrid"
    ) -> list[Hit]:
        """The `k` best chunks for `query`, best first."""
        filters = filters or Filters()
        depth = max(self.candidates, k)
        vector = self._vector(query, depth, filters) if mode != "lexical" else []
        lexical = self._lexical(query, depth, filters) if mode != "vector" else []
        scores: dict[str, float] = {}
        for ranked in (vector, lexical):
            for rank, chunk_id in enumerate(ranked, start=1):
                scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (self.rrf_k + rank)
        vector_rank = {c: r for r, c in enumerate(vector, start=1)}
        lexical_rank = {c: r for r, c in enumerate(lexical, start=1)}
        best = sorted(scores, key=lambda c: (-scores[c], c))[:k]
        return [
            Hit(self.chunks[c], scores[c], vector_rank.get(c), lexical_rank.get(c)) for c in best
        ]

    def _vector(self, query: str, depth: int, filters: Filters) -> list[str]:
        """Filtered searches are answered from a deeper unfiltered one when it holds enough
        matches (the best matches of the whole ranking are the best of the filtered one):
        chroma's own filtered search scans the matching rows and is ten times slower at
        100,000 chunks. Too few matches, and chroma filters."""
        wanted = filters.items()
        if not wanted:
            found = self.vector_search(query, depth, None)
            return [chunk_id for chunk_id, _ in found if chunk_id in self.chunks]
        found = self.vector_search(query, depth * OVERFETCH, None)
        kept = [
            chunk_id
            for chunk_id, _ in found
            if (chunk := self.chunks.get(chunk_id)) is not None
            and all(getattr(chunk, field) == value for field, value in wanted)
        ]
        if len(kept) >= depth or len(found) < depth * OVERFETCH:
            return kept[:depth]
        found = self.vector_search(query, depth, filters.chroma_where())
        return [chunk_id for chunk_id, _ in found if chunk_id in self.chunks]

    def _lexical(self, query: str, depth: int, filters: Filters) -> list[str]:
        allowed = None
        for field, value in filters.items():
            match = self._columns[field] == value
            allowed = match if allowed is None else allowed & match
        return [chunk_id for chunk_id, _ in self.lexical.search(query, depth, allowed)]


def documents_in_order(hits: Sequence[Hit]) -> list[str]:
    """Document ids of the hits, first occurrence only: what a reader cites."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(hit.doc_id, None)
    return list(seen)
