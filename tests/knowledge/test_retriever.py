"""Fusion and filters of the hybrid retriever, over a real BM25 index and a vector ranking
given in the test (the vector side against chroma is covered in test_knowledge_assets)."""

from __future__ import annotations

from dagster_platform.knowledge.documents import Chunk
from dagster_platform.knowledge.lexical import LexicalIndex
from dagster_platform.knowledge.retriever import OVERFETCH, Filters, HybridRetriever


def chunk(i: int, source: str, cluster: str, text: str) -> Chunk:
    return Chunk(f"c{i:03d}", f"d{i:03d}", source, source, None, cluster, "t", "h", text, f"h{i}")  # type: ignore[arg-type]


CHUNKS = [
    chunk(0, "runbook", "etl-prod", "디스크 사용률이 가득 찼을 때 df -h 로 확인"),
    chunk(1, "incident", "etl-prod", "etl-prod-worker-07 disk full incident"),
    chunk(2, "runbook", "staging", "high cpu on staging workers"),
    *[chunk(i, "object", "staging", f"host staging-worker-{i:02d}") for i in range(3, 200)],
]


class Ranking:
    """A vector ranking in a fixed order that records how it was asked."""

    def __init__(self, order: list[str]):
        self.order, self.calls = order, []

    def __call__(self, query: str, k: int, where: dict | None) -> list[tuple[str, float]]:
        self.calls.append((k, where))
        ids = self.order
        if where is not None:
            clauses = where.get("$and", [where])
            allowed = {
                c.chunk_id
                for c in CHUNKS
                if all(getattr(c, f) == v for clause in clauses for f, v in clause.items())
            }
            ids = [i for i in ids if i in allowed]
        return [(i, 1.0 - n / 1000) for n, i in enumerate(ids[:k])]


def retriever(order: list[str]) -> tuple[HybridRetriever, Ranking]:
    ranking = Ranking(order)
    index = LexicalIndex.build([c.chunk_id for c in CHUNKS], [c.text for c in CHUNKS])
    return HybridRetriever(CHUNKS, index, ranking, candidates=5), ranking


def test_a_chunk_both_sides_rank_well_wins() -> None:
    r, _ = retriever(["c001", "c050", "c000"])
    hits = r.search("etl-prod-worker-07 디스크", k=3)
    assert hits[0].chunk.chunk_id == "c001"
    assert hits[0].vector_rank == 1 and hits[0].lexical_rank is not None
    assert {h.chunk.chunk_id for h in hits} >= {"c000", "c001"}


def test_modes_use_one_side_only() -> None:
    r, ranking = retriever(["c050", "c051"])
    assert [h.chunk.chunk_id for h in r.search("staging", k=2, mode="vector")] == ["c050", "c051"]
    ranking.calls.clear()
    lexical = r.search("df -h", k=2, mode="lexical")
    assert lexical[0].chunk.chunk_id == "c000" and ranking.calls == []


def test_a_filter_is_answered_from_a_deeper_unfiltered_search_when_it_can() -> None:
    order = [c.chunk_id for c in reversed(CHUNKS)]  # objects first, the runbooks last
    r, ranking = retriever(order)
    hits = r.search("disk", k=2, filters=Filters(source="object"), mode="vector")
    assert all(h.chunk.source == "object" for h in hits)
    assert ranking.calls == [(5 * OVERFETCH, None)]


def test_a_filter_too_rare_for_the_deeper_search_falls_back_to_the_store() -> None:
    order = [c.chunk_id for c in reversed(CHUNKS)]
    r, ranking = retriever(order)
    hits = r.search("disk", k=2, filters=Filters(source="runbook", cluster_id="etl-prod"))
    assert [h.chunk.chunk_id for h in hits] == ["c000"]
    assert ranking.calls[-1] == (5, {"$and": [{"source": "runbook"}, {"cluster_id": "etl-prod"}]})
