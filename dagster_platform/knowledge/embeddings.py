"""Sentence embeddings from a local sentence-transformers folder, loaded once per process.

The model is never fetched from a hub: the default is the packaged all-MiniLM-L6-v2 linked into
the state folder, and any other model must be a folder or already sit in the local Hugging Face
cache. Loading takes seconds and hundreds of MB, so every `Embedder` of the same folder, backend
and device shares one loaded model, and nothing loads until the first text is encoded.
Vectors come back L2-normalised float32, so a dot product is the cosine similarity the store
ranks by.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from dagster_platform.lib.packaged_models import (
    EMBEDDING_MODEL_NAME,
    ModelPreparationError,
    embedding_model_dir,
    prepare_embedding_model,
    read_manifest,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Backend = Literal["torch", "onnx"]

_LOADED: dict[tuple[Path, Backend, str | None], SentenceTransformer] = {}
_LOAD_LOCK = threading.Lock()


class EmbeddingModelError(RuntimeError):
    """The embedding model could not be found locally or could not be loaded."""


def resolve_embedding_model(name: str | None, models_dir: Path) -> Path:
    """The local folder of the model `name` (None: the packaged model, prepared if needed).

    A name that is no folder is looked up in the local Hugging Face cache only, so a typo fails
    here with the name in the message instead of starting a download.
    """
    if name is None:
        folder = embedding_model_dir(models_dir)
        if read_manifest(folder) is None or not (folder / "config.json").is_file():
            try:
                prepare_embedding_model(models_dir)
            except ModelPreparationError as exc:
                raise EmbeddingModelError(f"packaged embedding model unavailable: {exc}") from exc
        return folder.resolve()
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError) as exc:
        raise EmbeddingModelError(
            f"embedding model {name!r} not found: {path} does not exist and it is not in the "
            "local Hugging Face cache (models are never downloaded at run time)"
        ) from exc


def _load(path: Path, backend: Backend, device: str | None) -> SentenceTransformer:
    """The shared model for (path, backend, device), loaded on first use."""
    key = (path, backend, device)
    with _LOAD_LOCK:
        if key not in _LOADED:
            if backend == "onnx" and importlib.util.find_spec("optimum") is None:
                raise EmbeddingModelError(
                    "backend='onnx' needs optimum-onnx (sentence-transformers[onnx]), which is not "
                    "installed: it pins transformers<4.58 while this platform runs transformers 5, "
                    "and the packaged model ships no ONNX export. Use backend='torch'."
                )
            from sentence_transformers import SentenceTransformer

            try:
                _LOADED[key] = SentenceTransformer(
                    str(path), device=device, backend=backend, local_files_only=True
                )
            except (OSError, ValueError) as exc:
                raise EmbeddingModelError(f"cannot load embedding model {path}: {exc}") from exc
        return _LOADED[key]


class Embedder:
    """Encodes texts with one local sentence-transformers model; cheap to create."""

    def __init__(
        self,
        model_path: Path,
        *,
        backend: Backend = "torch",
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        self.model_path = Path(model_path).resolve()
        self.backend: Backend = backend
        self.device = device
        self.model_name = name or self.model_path.name

    @classmethod
    def from_name(
        cls,
        name: str | None,
        models_dir: Path,
        *,
        backend: Backend = "torch",
        device: str | None = None,
    ) -> Embedder:
        """The embedder for a settings value (`EMBEDDING_MODEL`; None: the packaged model)."""
        path = resolve_embedding_model(name, models_dir)
        return cls(path, backend=backend, device=device, name=name or EMBEDDING_MODEL_NAME)

    @property
    def model(self) -> SentenceTransformer:
        return _load(self.model_path, self.backend, self.device)

    @property
    def dimension(self) -> int:
        dimension = self.model.get_embedding_dimension()
        if dimension is None:
            raise EmbeddingModelError(f"{self.model_path} does not declare its embedding size")
        return dimension

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in the order given."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
