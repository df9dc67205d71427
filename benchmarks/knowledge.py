"""The knowledge base: embedding throughput, incremental re-embedding, hybrid query latency at
100,000 chunks, and retrieval quality of hybrid against vector-only, in one run.

- Throughput: our `chunk_embeddings` path (embed with the packaged MiniLM, upsert into chroma)
  against a bare `SentenceTransformer.encode` of the same texts; the ONNX backend is tried too.
- Incremental: re-syncing after 1 % of the chunks changed against the full sync.
- Latency: hybrid search (query embedding, chroma, BM25, fusion) over STORE_CHUNKS synthetic
  chunks whose vectors are random unit vectors (embedding 100,000 texts here would take most
  of an hour; the search does not care where the vectors came from), against vector-only.
- Quality: hit@5 and MRR on the golden questions over the real sample runbooks and incidents.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine
from dagster_platform.knowledge.base import lexical_index, open_retriever, store_records
from dagster_platform.knowledge.documents import Chunk, build_chunks
from dagster_platform.knowledge.embeddings import Embedder, EmbeddingModelError
from dagster_platform.knowledge.evaluation import evaluate, load_golden, score_of
from dagster_platform.knowledge.retriever import MODES, Filters
from dagster_platform.knowledge.vector_store import open_store
from dagster_platform.settings import get_settings

EMBED_TEXTS = 400
ROUNDS = 3
STORE_CHUNKS = 100_000
QUERIES = 200
CHANGED_SHARE = 0.01


def _variant(chunk: Chunk, n: int, suffix: str = "") -> Chunk:
    text = f"{chunk.text}\n({n}{suffix})"
    return Chunk(
        f"{chunk.chunk_id}~{n}",
        chunk.doc_id,
        chunk.source,
        chunk.object_type,
        chunk.object_key,
        chunk.cluster_id,
        chunk.title,
        chunk.heading,
        text,
        f"{chunk.content_hash[:16]}{n}{suffix}",
    )


def _sample_chunks() -> list[Chunk]:
    data = get_settings().data_dir
    return build_chunks(data / "runbooks", data / "incidents.jsonl").chunks


def embedding(embedder: Embedder, chunks: list[Chunk], folder: Path) -> dict[str, Any]:
    """Bare encode vs our sync (encode + upsert into a fresh collection), ROUNDS times each,
    alternating, medians compared; then a sync after 1 % of the chunks changed."""
    texts = [c.text for c in chunks]
    model = embedder.model
    model.encode(texts[:32], batch_size=64, normalize_embeddings=True)  # warm up
    bare_rounds, full_rounds = [], []
    for round_ in range(ROUNDS):
        started = time.perf_counter()
        model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        bare_rounds.append(time.perf_counter() - started)
        store, _ = open_store(folder / f"chroma-{round_}", None)
        try:
            started = time.perf_counter()
            full_report = store.sync(store_records(chunks), embedder.encode)
            full_rounds.append(time.perf_counter() - started)
            if round_ == ROUNDS - 1:
                step = round(1 / CHANGED_SHARE)
                changed = [
                    _variant(c, i, " edited") if i % step == 0 else c for i, c in enumerate(chunks)
                ]
                started = time.perf_counter()
                report = store.sync(store_records(changed), embedder.encode)
                incremental = time.perf_counter() - started
        finally:
            store.close()
    if full_report.embedded != len(chunks) or report.embedded != len(chunks[::step]):
        raise RuntimeError(f"unexpected sync: {full_report}, then {report}")
    bare, full = statistics.median(bare_rounds), statistics.median(full_rounds)
    try:
        onnx = Embedder(embedder.model_path, backend="onnx")
        started = time.perf_counter()
        onnx.encode(texts)
        onnx_tps: float | str = round(len(texts) / (time.perf_counter() - started), 1)
    except EmbeddingModelError as exc:
        onnx_tps = f"unavailable: {str(exc).splitlines()[0]}"
    return {
        "embed_texts": len(texts),
        "embed_rounds": ROUNDS,
        "bare_encode_tps": round(len(texts) / bare, 1),
        "asset_sync_tps": round(len(texts) / full, 1),
        "bare_encode_rounds_seconds": [round(x, 2) for x in bare_rounds],
        "asset_sync_rounds_seconds": [round(x, 2) for x in full_rounds],
        "onnx_encode_tps": onnx_tps,
        "full_sync_seconds": round(full, 3),
        "incremental_sync_seconds": round(incremental, 3),
        "incremental_embedded": report.embedded,
        "ratio_asset_vs_bare_encode": round(bare / full, 3),
        "ratio_incremental_vs_full": round(incremental / full, 4),
    }


def _synthetic(chunks: list[Chunk], count: int) -> list[Chunk]:
    """`count` chunks whose texts mix sentences of the sample, with sources and clusters."""
    rng = random.Random(7)
    sentences = [s for c in chunks for s in c.text.split("\n") if len(s) > 20]
    clusters = ["etl-prod", "analytics-prod", "staging"]
    out = []
    for i in range(count):
        base = chunks[i % len(chunks)]
        text = " ".join(rng.sample(sentences, 2))
        out.append(
            Chunk(f"syn-{i:06d}", f"syn-doc-{i // 5}", base.source, base.object_type, None,
                  clusters[i % 3], base.title, base.heading, text, f"h{i}")
        )  # fmt: skip
    return out


def latency(
    embedder: Embedder, chunks: list[Chunk], folder: Path, store_chunks: int, queries: int
) -> dict[str, Any]:
    """Per-query latency over `store_chunks` chunks: hybrid, vector-only, lexical-only."""
    synthetic = _synthetic(chunks, store_chunks)
    rng = np.random.default_rng(7)

    def random_unit(texts: list[str]) -> np.ndarray:
        vectors = rng.standard_normal((len(texts), embedder.dimension)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    store, _ = open_store(folder / "chroma-large", None)
    try:
        started = time.perf_counter()
        store.sync(store_records(synthetic), random_unit, batch_size=5_000)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        lexical_index(synthetic, folder / "bm25-large")
        bm25_seconds = time.perf_counter() - started
        retriever = open_retriever(synthetic, store, embedder, folder / "bm25-large")
        golden = load_golden(get_settings().data_dir / "golden_questions.jsonl")
        questions = [q.question for q in golden]
        timings: dict[str, list[float]] = {}
        for name, mode, filters in (
            ("hybrid", "hybrid", None),
            ("vector", "vector", None),
            ("lexical", "lexical", None),
            ("hybrid_filtered", "hybrid", Filters(source="runbook", cluster_id="etl-prod")),
        ):
            for question in questions[:5]:  # warm up
                retriever.search(question, 5, filters, mode)  # type: ignore[arg-type]
            timings[name] = []
            for i in range(queries):
                started = time.perf_counter()
                retriever.search(questions[i % len(questions)], 5, filters, mode)  # type: ignore[arg-type]
                timings[name].append((time.perf_counter() - started) * 1000)
    finally:
        store.close()
    figures: dict[str, Any] = {
        "store_chunks": store_chunks,
        "store_load_seconds": round(load_seconds, 1),
        "bm25_build_seconds": round(bm25_seconds, 1),
    }
    for name, values in timings.items():
        cuts = statistics.quantiles(values, n=100)
        figures[f"{name}_p50_ms"] = round(statistics.median(values), 2)
        figures[f"{name}_p95_ms"] = round(cuts[94], 2)
    figures["ratio_hybrid_p95_vs_vector_p95"] = round(
        figures["hybrid_p95_ms"] / figures["vector_p95_ms"], 3
    )
    figures["ratio_hybrid_p95_vs_target_50ms"] = round(figures["hybrid_p95_ms"] / 50, 3)
    return figures


def quality(embedder: Embedder, chunks: list[Chunk], folder: Path) -> dict[str, Any]:
    """hit@5 and MRR of each mode on the golden questions over the real sample chunks."""
    store, _ = open_store(folder / "chroma-sample", None)
    try:
        store.sync(store_records(chunks), embedder.encode)
        retriever = open_retriever(chunks, store, embedder, folder / "bm25-sample")
        questions = load_golden(get_settings().data_dir / "golden_questions.jsonl")
        scores = evaluate(
            {m: (lambda q, k, m=m: retriever.search(q, k, mode=m)) for m in MODES}, questions
        )
    finally:
        store.close()
    hybrid, vector = score_of(scores, "hybrid"), score_of(scores, "vector")
    lexical = score_of(scores, "lexical")
    return {
        "golden_questions": len(questions),
        "hybrid_hit_at_5": round(hybrid.hits[5], 3),
        "vector_hit_at_5": round(vector.hits[5], 3),
        "lexical_hit_at_5": round(lexical.hits[5], 3),
        "hybrid_mrr": round(hybrid.mrr, 3),
        "vector_mrr": round(vector.mrr, 3),
        "lexical_mrr": round(lexical.mrr, 3),
        "ratio_hybrid_vs_vector_hit_at_5": round(hybrid.hits[5] / vector.hits[5], 3),
        "ratio_hybrid_vs_vector_mrr": round(hybrid.mrr / vector.mrr, 3),
    }


def run(
    embed_texts: int = EMBED_TEXTS, store_chunks: int = STORE_CHUNKS, queries: int = QUERIES
) -> dict[str, Any]:
    settings = get_settings()
    embedder = Embedder.from_name(settings.embedding_model, settings.models_dir)
    sample = _sample_chunks()
    texts = [_variant(sample[i % len(sample)], i) for i in range(embed_texts)]
    with tempfile.TemporaryDirectory(prefix="bench-knowledge-") as folder:
        figures = {
            "name": "knowledge",
            **embedding(embedder, texts, Path(folder)),
            **latency(embedder, sample, Path(folder), store_chunks, queries),
            **quality(embedder, sample, Path(folder)),
            "model": embedder.model_name,
            "machine": machine(),
        }
    return figures


if __name__ == "__main__":
    print(json.dumps(run()))
