"""`dagster-platform knowledge search`: ask the knowledge base what the agents would retrieve."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from dagster_platform.cli.common import JsonOption, fail
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
    as_json: JsonOption = False,
) -> None:
    """The best chunks for QUERY, with where each comes from (materialize the knowledge group
    first)."""
    # heavy imports (torch, chroma) only when searching, never for `--help`
    from dagster_platform.knowledge.base import KnowledgeUnavailable, open_knowledge
    from dagster_platform.knowledge.retriever import MODES, Filters

    if mode not in MODES:
        raise fail(f"unknown mode {mode!r}; one of: {', '.join(MODES)}")
    try:
        retriever, store = open_knowledge(get_settings())
    except KnowledgeUnavailable as exc:
        raise fail(str(exc)) from None
    try:
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
