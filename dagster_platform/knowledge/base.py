"""The knowledge base as the agents see it: chunks from the warehouse, their vectors in chroma,
and a BM25 index saved in the state folder, all three for the same chunk set.

The BM25 index is saved with the fingerprint of the chunks it was built from, so a process that
opens the knowledge base loads it when it is current and rebuilds it (in seconds) when not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from dagster_platform.knowledge.documents import Chunk
from dagster_platform.knowledge.embeddings import Embedder
from dagster_platform.knowledge.lexical import LexicalIndex, LexicalIndexError
from dagster_platform.knowledge.retriever import HybridRetriever
from dagster_platform.knowledge.vector_store import ChunkStore, StoreRecord
from dagster_platform.settings import Settings

FINGERPRINT_FILE = "chunks.sha256"


def fingerprint(chunks: Sequence[Chunk]) -> str:
    """Content hash of a chunk set: ids and content hashes, in id order."""
    digest = hashlib.sha256()
    for chunk in sorted(chunks, key=lambda c: c.chunk_id):
        digest.update(f"{chunk.chunk_id}\0{chunk.content_hash}\n".encode())
    return digest.hexdigest()


def store_records(chunks: Sequence[Chunk]) -> list[StoreRecord]:
    """The chunks as vector-store records, with the metadata the retriever filters on."""
    return [
        StoreRecord(
            c.chunk_id,
            c.text,
            {
                "doc_id": c.doc_id,
                "source": c.source,
                "object_type": c.object_type,
                "object_key": c.object_key,
                "cluster_id": c.cluster_id,
            },
            c.content_hash,
        )
        for c in chunks
    ]


def lexical_index(chunks: Sequence[Chunk], folder: Path) -> tuple[LexicalIndex, bool]:
    """The saved index when it was built from these chunks, else a new one saved in its place;
    True when it was (re)built."""
    wanted = fingerprint(chunks)
    marker = folder / FINGERPRINT_FILE
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == wanted:
        try:
            return LexicalIndex.load(folder), False
        except LexicalIndexError:
            pass  # rebuilt below
    index = LexicalIndex.build([c.chunk_id for c in chunks], [c.text for c in chunks])
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # never a fingerprint beside a half-saved index
    index.save(folder)
    marker.write_text(wanted, encoding="utf-8")
    return index, True


def open_retriever(
    chunks: Sequence[Chunk], store: ChunkStore, embedder: Embedder, lexical_folder: Path
) -> HybridRetriever:
    index, _ = lexical_index(chunks, lexical_folder)

    @lru_cache(maxsize=1)  # a filtered search may ask twice for the same question
    def embedded(query: str) -> np.ndarray:
        return embedder.encode([query])[0]

    def vector_search(query: str, k: int, where: dict | None) -> list[tuple[str, float]]:
        return store.query(embedded(query), k, where)

    return HybridRetriever(chunks, index, vector_search)


class KnowledgeUnavailable(RuntimeError):
    """The knowledge base cannot be searched yet; the message says what to materialize."""


def open_knowledge(
    settings: Settings, embedder: Embedder | None = None
) -> tuple[HybridRetriever, ChunkStore]:
    """The hybrid retriever over what the knowledge assets materialized, and the store to close
    when done (the CLI and the agents open it the same way)."""
    from dagster_platform.knowledge.documents import read_chunks
    from dagster_platform.knowledge.embeddings import EmbeddingModelError
    from dagster_platform.knowledge.vector_store import open_store
    from dagster_platform.lib.warehouse import open_warehouse

    if not settings.warehouse_path.exists():
        raise KnowledgeUnavailable(f"no warehouse at {settings.warehouse_path}: run `make run`")
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        chunks = read_chunks(conn)
    if not chunks:
        raise KnowledgeUnavailable(
            "the knowledge base is empty: materialize the `knowledge` group first"
        )
    try:
        embedder = embedder or Embedder.from_name(settings.embedding_model, settings.models_dir)
    except EmbeddingModelError as exc:
        raise KnowledgeUnavailable(str(exc)) from exc
    host = settings.chroma_host
    store, rebuilt = open_store(None if host else settings.state_dir / "chroma", host)
    if rebuilt:
        store.close()
        raise KnowledgeUnavailable(f"{rebuilt}; materialize chunk_embeddings to fill it again")
    folder = settings.state_dir / "knowledge" / "bm25"
    return open_retriever(chunks, store, embedder, folder), store


class LazyKnowledge:
    """A retriever factory that opens the knowledge base on first use (many questions never
    search) and closes the stores it opened (chroma keeps a system per path otherwise)."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder
        self._stores: list[ChunkStore] = []

    def __call__(self) -> HybridRetriever:
        retriever, store = open_knowledge(self.settings, self.embedder)
        self._stores.append(store)
        return retriever

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._stores.clear()
