"""The vector store (chroma) and the embedder, connecting late.

chroma is the persistent folder in the state folder unless `CHROMA_HOST` names a server; the
embedder is the packaged all-MiniLM-L6-v2 unless `EMBEDDING_MODEL` names another. Assets that
write the persistent store share the `vector_store` pool (one writer at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field

from dagster_platform.settings import get_settings

if TYPE_CHECKING:
    from dagster_platform.knowledge.embeddings import Embedder
    from dagster_platform.knowledge.vector_store import ChunkStore

VECTOR_STORE_POOL = "vector_store"


class KnowledgeResource(dg.ConfigurableResource):
    """Where the knowledge base lives and which model embeds it."""

    chroma_path: str | None = Field(
        default=None, description="Persistent chroma folder; default: chroma/ in the state folder."
    )
    chroma_host: str | None = Field(default=None, description="Overrides CHROMA_HOST.")
    embedding_model: str | None = Field(default=None, description="Overrides EMBEDDING_MODEL.")
    embedding_backend: Literal["torch", "onnx"] = Field(
        default="torch", description="sentence-transformers backend: torch or onnx."
    )
    lexical_path: str | None = Field(
        default=None, description="BM25 index folder; default: knowledge/bm25 in the state folder."
    )

    @property
    def host(self) -> str | None:
        return self.chroma_host or get_settings().chroma_host

    @property
    def store_path(self) -> Path:
        return Path(self.chroma_path) if self.chroma_path else get_settings().state_dir / "chroma"

    @property
    def lexical_folder(self) -> Path:
        if self.lexical_path:
            return Path(self.lexical_path)
        return get_settings().state_dir / "knowledge" / "bm25"

    @property
    def model_name(self) -> str | None:
        return self.embedding_model or get_settings().embedding_model

    def embedder(self) -> Embedder:
        from dagster_platform.knowledge.embeddings import Embedder

        return Embedder.from_name(
            self.model_name, get_settings().models_dir, backend=self.embedding_backend
        )

    @contextmanager
    def store(self) -> Iterator[tuple[ChunkStore, str | None]]:
        """The store, and a note when a corrupted persistent folder was set aside and rebuilt;
        closed afterwards, since chroma otherwise keeps the folder open for the process."""
        from dagster_platform.knowledge.vector_store import open_store

        store, note = open_store(None if self.host else self.store_path, self.host)
        try:
            yield store, note
        finally:
            store.close()
