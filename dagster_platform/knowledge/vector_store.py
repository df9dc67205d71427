"""Chunk vectors in chroma: an embedded `PersistentClient` in the state folder, or a chroma
server when `CHROMA_HOST` is set.

The store only ever holds vectors we computed (collections have no embedding function, so chroma
never downloads its own model) and each record carries the chunk's content hash: `sync` embeds
only what is new or changed, which makes a re-run after an edit cost seconds, not a full pass.
The persistent folder is a cache of the warehouse's chunks, never the source of truth, so a
folder that cannot be read is moved aside (nothing is deleted) and rebuilt by the next `sync`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

COLLECTION = "knowledge_chunks"
DEFAULT_PORT = 8000
EXAMPLES = 5  # ids named in a problem message

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class StoreRecord:
    """One chunk as stored: `content_hash` decides whether it must be embedded again."""

    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str

    def chroma_metadata(self) -> dict[str, Any]:
        """Metadata with the hash and without None values, which chroma cannot store."""
        metadata = {**self.metadata, "content_hash": self.content_hash}
        return {key: value for key, value in metadata.items() if value is not None}


@dataclass(frozen=True)
class SyncReport:
    """What one sync changed; `embedded` is what it cost in model calls."""

    added: int
    updated: int
    deleted: int
    unchanged: int
    embedded: int


def _chroma_settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def open_client(path: Path | None, host: str | None) -> ClientAPI:
    """A chroma server client when `host` ("host", "host:port" or a URL) is set, else an
    embedded client persisting to `path`."""
    import chromadb

    if host:
        url = urlsplit(host if "://" in host else f"http://{host}")
        return chromadb.HttpClient(
            host=url.hostname or "localhost",
            port=url.port or DEFAULT_PORT,
            ssl=url.scheme == "https",
            settings=_chroma_settings(),
        )
    if path is None:
        raise ValueError("chroma needs a folder or a host")
    return chromadb.PersistentClient(path=str(path), settings=_chroma_settings())


def _examples(ids: set[str]) -> str:
    return ", ".join(sorted(ids)[:EXAMPLES])


class ChunkStore:
    """One chroma collection of chunk vectors, compared by cosine distance."""

    def __init__(self, client: ClientAPI, collection_name: str = COLLECTION) -> None:
        self.client = client
        self.collection_name = collection_name
        self.collection = self._collection()

    def _collection(self) -> Collection:
        return self.client.get_or_create_collection(
            self.collection_name,
            configuration={"hnsw": {"space": "cosine"}},
            embedding_function=None,
        )

    @property
    def batch_size(self) -> int:
        return self.client.get_max_batch_size()

    def _pages(self, include: list[str]) -> Iterator[dict[str, Any]]:
        """The whole collection, one `get` page at a time, so memory stays bounded."""
        size = self.batch_size
        offset = 0
        while True:
            page = self.collection.get(limit=size, offset=offset, include=include)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def stored(self) -> dict[str, dict[str, Any]]:
        """Id → stored metadata of every record."""
        return {
            id_: dict(metadata or {})
            for page in self._pages(["metadatas"])
            for id_, metadata in zip(page["ids"], page["metadatas"], strict=True)
        }

    def sync(self, records: list[StoreRecord], embed: Embed, batch_size: int = 256) -> SyncReport:
        """Make the collection hold exactly `records`, embedding only new or changed texts.

        A record whose hash is unchanged but whose metadata differs (a chunk moved to another
        cluster) gets its metadata rewritten without being embedded again.
        """
        ids = [record.id for record in records]
        if duplicates := {id_ for id_, n in Counter(ids).items() if n > 1}:
            raise ValueError(f"duplicate record ids: {_examples(duplicates)}")
        stored = self.stored()
        # by length, as sentence-transformers orders one call: batches of like-sized texts
        # waste no time on padding, whatever order the records came in
        to_embed = sorted(
            (r for r in records if stored.get(r.id, {}).get("content_hash") != r.content_hash),
            key=lambda r: len(r.text),
        )
        embedded_ids = {r.id for r in to_embed}
        relabel = [
            r for r in records if r.id not in embedded_ids and stored[r.id] != r.chroma_metadata()
        ]
        gone = sorted(set(stored) - set(ids))
        step = max(1, min(batch_size, self.batch_size))
        for start in range(0, len(to_embed), step):
            batch = to_embed[start : start + step]
            vectors = np.asarray(embed([r.text for r in batch]), dtype=np.float32)
            if vectors.shape[0] != len(batch):
                raise ValueError(
                    f"embed returned {vectors.shape[0]} vectors for {len(batch)} texts"
                )
            self.collection.upsert(
                ids=[r.id for r in batch],
                embeddings=vectors,
                documents=[r.text for r in batch],
                metadatas=[r.chroma_metadata() for r in batch],
            )
        for start in range(0, len(relabel), step):
            batch = relabel[start : start + step]
            # chroma's update merges metadata; a None value is how a key is dropped
            metadatas = [
                {**dict.fromkeys(stored[r.id].keys()), **r.chroma_metadata()} for r in batch
            ]
            self.collection.update(ids=[r.id for r in batch], metadatas=metadatas)
        for start in range(0, len(gone), step):
            self.collection.delete(ids=gone[start : start + step])
        added = len(embedded_ids - set(stored))
        return SyncReport(
            added=added,
            updated=len(to_embed) - added + len(relabel),
            deleted=len(gone),
            unchanged=len(records) - len(to_embed) - len(relabel),
            embedded=len(to_embed),
        )

    def verify(self, expected_ids: set[str], dimension: int) -> list[str]:
        """What is wrong with the stored vectors; empty when they match `expected_ids`."""
        problems = []
        count = self.count()
        if count != len(expected_ids):
            problems.append(f"store holds {count} records, expected {len(expected_ids)}")
        seen: set[str] = set()
        wrong_dimension: dict[str, int] = {}
        not_finite: set[str] = set()
        for page in self._pages(["embeddings"]):
            for id_, vector in zip(page["ids"], page["embeddings"], strict=True):
                seen.add(id_)
                if len(vector) != dimension:
                    wrong_dimension[id_] = len(vector)
                elif not np.isfinite(vector).all():
                    not_finite.add(id_)
        if missing := expected_ids - seen:
            problems.append(f"{len(missing)} expected ids missing: {_examples(missing)}")
        if extra := seen - expected_ids:
            problems.append(f"{len(extra)} stray ids: {_examples(extra)}")
        if wrong_dimension:
            found = sorted(set(wrong_dimension.values()))
            problems.append(
                f"{len(wrong_dimension)} vectors have dimension {found}, expected {dimension}: "
                f"{_examples(set(wrong_dimension))}"
            )
        if not_finite:
            problems.append(f"{len(not_finite)} vectors hold NaN or inf: {_examples(not_finite)}")
        return problems

    def query(
        self, embedding: np.ndarray, k: int, where: dict | None = None
    ) -> list[tuple[str, float]]:
        """The `k` nearest (id, cosine similarity) pairs, best first."""
        result = self.collection.query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32)],
            n_results=k,
            where=where,
            include=["distances"],
        )
        distances = result["distances"] or [[]]
        return [
            (id_, 1.0 - float(distance))
            for id_, distance in zip(result["ids"][0], distances[0], strict=True)
        ]

    def count(self) -> int:
        return self.collection.count()

    def reset(self) -> None:
        """Drop every record (the next `sync` embeds everything again)."""
        self.client.delete_collection(self.collection_name)
        self.collection = self._collection()

    def check_readable(self) -> None:
        """Touch the sqlite log, the stored vectors and the HNSW index, so a damaged folder
        fails here rather than halfway through a sync."""
        self.collection.count()
        first = self.collection.get(limit=1, include=["embeddings"])
        if first["ids"]:
            self.collection.query(query_embeddings=first["embeddings"], n_results=1)

    def close(self) -> None:
        """Release the client (for an embedded store: its sqlite file and index)."""
        self.client.close()


def _open_checked(path: Path, collection_name: str) -> ChunkStore:
    """An embedded store that has been read once; on failure nothing of it stays open."""
    from chromadb.api.shared_system_client import SharedSystemClient

    client = None
    try:
        client = open_client(path, None)
        store = ChunkStore(client, collection_name)
        store.check_readable()
        return store
    except Exception:
        if client is None:
            # chroma caches a system per folder even when starting it failed, and would hand
            # that broken system to every later client of the same folder in this process
            SharedSystemClient._identifier_to_system.pop(str(path), None)
        else:
            with contextlib.suppress(Exception):  # closing a damaged store may fail as well
                client.close()
        raise


def _is_lock_error(exc: Exception) -> bool:
    """Another process holding the store is not damage: it must never be moved aside."""
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def open_store(
    path: Path | None, host: str | None, collection_name: str = COLLECTION
) -> tuple[ChunkStore, str | None]:
    """The store, plus a note when the embedded folder was unreadable and has been rebuilt.

    A deleted folder is simply created again. A damaged one is moved to
    `<path>.corrupt-<timestamp>` and replaced by an empty store; the caller's next `sync` then
    embeds every chunk again. A server (`host`) is never touched that way: its errors raise.
    """
    from chromadb.errors import ChromaError

    if host or path is None:
        return ChunkStore(open_client(path, host), collection_name), None
    try:
        return _open_checked(path, collection_name), None
    except ChromaError as exc:
        if _is_lock_error(exc):
            raise
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        path.rename(aside)
        store = _open_checked(path, collection_name)
        return store, (
            f"chroma store at {path} was unreadable ({type(exc).__name__}: {exc}); moved it to "
            f"{aside} and started an empty store, so every chunk is embedded again"
        )
