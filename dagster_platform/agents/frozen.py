"""A frozen evaluation state: the sample data, the ontology and the knowledge base, built once
into a folder of its own.

Agent benchmarks and evaluations must score the same facts on every run and must never touch
the live warehouse: a kill proposal made while benchmarking must not land in the real action
log, and streamed metrics arriving meanwhile must not move the expected answers. So they run
against a copy of the settings whose state folder is this one. It holds the sample tables as
the ingestion assets leave them (stream and rollup tables empty), the ontology objects and
links, the document chunks with their BM25 index and, unless asked not to, their embeddings in
a persistent chroma. Models are not copied: `models/` links to the live state's prepared ones.

Building embeds every chunk, so a folder is reused while its marker names the same sample
fingerprint; each reuse restores the warehouse from the pristine copy kept beside it, so what
one run wrote (interactions, proposals) never shows in the next.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from dagster_platform.ingestion.readers import read_source
from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.ingestion.validation import to_typed
from dagster_platform.kafka.rollups import ROLLUPS
from dagster_platform.kafka.tables import ensure_all_tables
from dagster_platform.knowledge.base import lexical_index, store_records
from dagster_platform.knowledge.documents import Chunk, build_chunks, write_chunks
from dagster_platform.knowledge.embeddings import Embedder
from dagster_platform.knowledge.vector_store import open_store
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import open_warehouse, replace_table
from dagster_platform.ontology.build import build_links, build_objects, check_backing, record_build
from dagster_platform.ontology.loader import load_ontology
from dagster_platform.ontology.versioning import diff, last_published, publish, version_of
from dagster_platform.settings import Settings

log = get_logger(__name__)

MARKER = "frozen.json"
PRISTINE = "frozen.duckdb"
FORMAT = 1  # raise when what a frozen state holds changes, so old folders are rebuilt


class FrozenStateError(RuntimeError):
    """The sample does not build into a frozen state; the message says what is wrong."""


def sample_fingerprint(settings: Settings) -> str:
    """Content hash of everything a frozen state is built from: the sample data and the
    ontology (paths and bytes, in path order)."""
    digest = hashlib.sha256(f"frozen-state {FORMAT}\n".encode())
    for label, folder in (("data", settings.data_dir), ("ontology", settings.ontology_dir)):
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(f"{label}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _read_marker(target: Path) -> dict[str, object] | None:
    try:
        return json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _reusable(marker: dict[str, object] | None, wanted: dict[str, object], embed: bool) -> bool:
    if marker is None or marker.get("fingerprint") != wanted["fingerprint"]:
        return False
    if not embed:
        return True
    return (
        bool(marker.get("embedded")) and marker.get("embedding_model") == wanted["embedding_model"]
    )


def _clear(target: Path) -> None:
    """Remove what an earlier build left, and nothing else of the folder."""
    (target / MARKER).unlink(missing_ok=True)
    for name in (PRISTINE, f"{PRISTINE}.wal", "warehouse.duckdb", "warehouse.duckdb.wal"):
        (target / name).unlink(missing_ok=True)
    for name in ("chroma", "knowledge"):
        shutil.rmtree(target / name, ignore_errors=True)


def _link_models(target: Path, models_dir: Path) -> None:
    link = target / "models"
    models = models_dir.resolve()
    if link.is_symlink() and link.resolve() == models:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise FrozenStateError(f"{link} is a folder, not a link to the prepared models")
    link.symlink_to(models, target_is_directory=True)


def _build_warehouse(settings: Settings, path: Path) -> list[Chunk]:
    """Sample tables, empty stream and rollup tables, the ontology and the chunks (returned),
    with the chunks' BM25 index beside the warehouse."""
    loaded = load_ontology(settings.ontology_dir)
    with open_warehouse(path) as conn:
        for spec in SOURCES:
            replace_table(conn, spec.name, to_typed(read_source(spec, settings.data_dir)))
        ensure_all_tables(conn)
        for rollup in ROLLUPS:
            conn.execute(rollup.create)
        problems = check_backing(conn, loaded)
        if problems:
            raise FrozenStateError(
                "the ontology does not map onto the sample: " + "; ".join(map(str, problems))
            )
        publish(conn, loaded.ontology, diff(last_published(conn), loaded.ontology))
        objects, links = build_objects(conn, loaded), build_links(conn, loaded)
        if not (objects.published and links.published):
            raise FrozenStateError(
                f"the sample ontology did not publish: {objects.total} objects "
                f"(duplicate keys {objects.duplicate_keys}), {links.dangling} dangling links"
            )
        record_build(conn, version_of(loaded.ontology), objects.total, links.total)
        chunks = build_chunks(
            settings.data_dir / "runbooks", settings.data_dir / "incidents.jsonl", conn
        )
        write_chunks(conn, chunks)
        conn.execute("CHECKPOINT")
    lexical_index(chunks.chunks, path.parent / "knowledge" / "bm25")
    return chunks.chunks


def _embed(settings: Settings, frozen: Settings, chunks: list[Chunk]) -> None:
    """Every chunk into the chroma of the frozen state, with the configured embedder."""
    embedder = Embedder.from_name(settings.embedding_model, frozen.models_dir)
    store, _ = open_store(frozen.state_dir / "chroma", None)
    try:
        store.sync(store_records(chunks), embedder.encode)
        problems = store.verify({c.chunk_id for c in chunks}, embedder.dimension)
    finally:
        store.close()
    if problems:
        raise FrozenStateError(
            "the frozen chroma does not match the chunks: " + "; ".join(problems)
        )


def _same_llm(settings: Settings) -> dict[str, object]:
    """The live state's vLLM server, named by its URL: a local server is found by the pid file
    of the live state folder, which the frozen copy does not have."""
    from dagster_platform.llm.service import resolve_backend

    backend, url, _ = resolve_backend(settings)
    return {"llm_backend": backend, "vllm_base_url": url} if backend == "vllm-server" else {}


def build_frozen_state(settings: Settings, target: Path, embed: bool = True) -> Settings:
    """The settings of a frozen evaluation state in `target`, built from `settings`' sample
    data, ontology and prepared models; reused when `target` already holds one of the same
    sample (its warehouse then restored to the state as built).

    The copy points nowhere live: its warehouse and chroma are in `target`, no chroma server
    and no YARN ResourceManager are configured. The model registry and the vLLM server stay
    the live ones, so the frozen state is answered by the same champion adapter and engine as
    production.
    """
    target = Path(target).resolve()
    if target == settings.state_dir.resolve():
        raise FrozenStateError(f"{target} is the live state folder; freeze into another one")
    frozen = settings.model_copy(
        update={
            "state_dir": target,
            "chroma_host": None,
            "yarn_resource_manager_url": None,
            "mlflow_tracking_uri": settings.resolved_mlflow_tracking_uri,
            **_same_llm(settings),
        }
    )
    wanted: dict[str, object] = {
        "format": FORMAT,
        "fingerprint": sample_fingerprint(settings),
        "embedded": embed,
        "embedding_model": settings.embedding_model or "packaged",
    }
    target.mkdir(parents=True, exist_ok=True)
    _link_models(target, settings.models_dir)
    pristine = target / PRISTINE
    marker = _read_marker(target)
    if _reusable(marker, wanted, embed) and pristine.is_file():
        log.info("frozen state reused", extra={"state_dir": str(target)})
    else:
        _clear(target)
        chunks = _build_warehouse(settings, pristine)
        if embed:
            _embed(settings, frozen, chunks)
        (target / MARKER).write_text(
            json.dumps({**wanted, "chunks": len(chunks)}, indent=2) + "\n", encoding="utf-8"
        )
        log.info("frozen state built", extra={"state_dir": str(target), "chunks": len(chunks)})
    frozen.warehouse_path.with_name(f"{frozen.warehouse_path.name}.wal").unlink(missing_ok=True)
    shutil.copyfile(pristine, frozen.warehouse_path)
    return frozen
