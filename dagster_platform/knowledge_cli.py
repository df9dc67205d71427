"""`dagster-platform knowledge search`: ask the knowledge base what the agents would retrieve."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from dagster_platform.settings import get_settings

knowledge_app = typer.Typer(
    help="The knowledge base: hybrid search over runbooks, incidents and ontology objects.",
    no_args_is_help=True,
)


@knowledge_app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question, in Korean or English.")],
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="How many chunks.")] = 5,
    mode: Annotated[str, typer.Option(help="hybrid, vector or lexical.")] = "hybrid",
    source: Annotated[str | None, typer.Option(help="runbook, incident or object.")] = None,
    cluster: Annotated[str | None, typer.Option(help="Only chunks of this cluster.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The best chunks for QUERY, with where each comes from (materialize the knowledge group
    first)."""
    # heavy imports (torch, chroma) only when searching, never for `--help`
    from dagster_platform.knowledge.base import open_retriever
    from dagster_platform.knowledge.documents import read_chunks
    from dagster_platform.knowledge.embeddings import Embedder, EmbeddingModelError
    from dagster_platform.knowledge.retriever import MODES, Filters
    from dagster_platform.knowledge.vector_store import open_store
    from dagster_platform.warehouse import open_warehouse

    if mode not in MODES:
        raise _fail(f"unknown mode {mode!r}; one of: {', '.join(MODES)}")
    settings = get_settings()
    if not settings.warehouse_path.exists():
        raise _fail(f"no warehouse at {settings.warehouse_path}: run `make run` first")
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        chunks = read_chunks(conn)
    if not chunks:
        raise _fail("the knowledge base is empty: materialize the `knowledge` group first")
    try:
        embedder = Embedder.from_name(settings.embedding_model, settings.models_dir)
    except EmbeddingModelError as exc:
        raise _fail(str(exc)) from None
    host = settings.chroma_host
    store, rebuilt = open_store(None if host else settings.state_dir / "chroma", host)
    try:
        if rebuilt:
            raise _fail(f"{rebuilt}; materialize chunk_embeddings to fill it again")
        folder = settings.state_dir / "knowledge" / "bm25"
        retriever = open_retriever(chunks, store, embedder, folder)
        hits = retriever.search(query, k, Filters(source=source, cluster_id=cluster), mode)  # type: ignore[arg-type]
    finally:
        store.close()
    if as_json:
        rows = [
            {**asdict(h.chunk), "score": h.score, "vector_rank": h.vector_rank,
             "lexical_rank": h.lexical_rank}
            for h in hits
        ]  # fmt: skip
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for rank, hit in enumerate(hits, start=1):
        typer.secho(f"{rank}. {hit.citation()}  (score {hit.score:.4f})", bold=True)
        typer.echo("   " + hit.chunk.text[:300].replace("\n", "\n   "))


def _fail(message: str) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(1)
