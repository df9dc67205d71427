"""The guide agent's tools: the runbooks and past incidents in the knowledge base.

Retrieved text is passed on as data; no tool acts on what it says.
"""

from __future__ import annotations

from pydantic import Field

from dagster_platform.agents.tools.base import (
    Agent,
    Context,
    Findings,
    Tool,
    ToolContext,
    _Arguments,
)
from dagster_platform.knowledge.retriever import Filters, Hit, documents_in_order
from dagster_platform.knowledge.tokens import tokenize

# Words every question has: a hit that shares only these with the question matches nothing
# ("what is the weather like" shares "what is the" with half the runbooks).
_FILLER = frozenset(
    {
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "before",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "keep",
        "keeps",
        "like",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "out",
        "should",
        "so",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "up",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "어떻",
        "떻게",
        "해야",
        "야되",
        "해줘",
        "알려",
        "려줘",
        "있어",
        "뭐야",
        "하나",
        "되나",
        "해요",
        "돼요",
    }
)


class SearchArgs(_Arguments):
    query: str = Field(
        min_length=1, max_length=1000, description="The question, Korean or English."
    )
    k: int = Field(3, ge=1, le=10, description="How many passages.")


def _shares_a_term(query: str, hits: list[Hit]) -> bool:
    """Whether any hit has a word of the question beyond the filler: ranked lists always have
    a first entry, so a question about nothing the documents cover must be told apart."""
    terms = {t for t in tokenize(query) if t not in _FILLER and len(t) > 1}
    return any(terms & set(tokenize(h.chunk.text)) for h in hits)


def _search(ctx: ToolContext, args: SearchArgs, source: str) -> Findings:
    hits = ctx.retriever().search(args.query, args.k, Filters(source=source))
    if not _shares_a_term(args.query, hits):
        hits = []
    rows = [
        {
            "chunk_id": h.chunk.chunk_id,
            "doc_id": h.doc_id,
            "heading": h.chunk.heading,
            "cluster_id": h.chunk.cluster_id,
            "score": round(h.score, 5),
            "vector_rank": h.vector_rank,
            "lexical_rank": h.lexical_rank,
        }
        for h in hits
    ]
    facts = [h.citation() for h in hits]
    contexts = [Context(h.chunk.chunk_id, source, h.chunk.text, h.citation()) for h in hits]
    documents = documents_in_order(hits)
    summary = (
        f"{len(hits)} {source} passage(s) from {', '.join(documents)}"
        if hits
        else f"no {source} matches the question"
    )
    return Findings(summary, facts, rows, contexts, documents)


def search_runbooks(ctx: ToolContext, args: SearchArgs) -> Findings:
    """Runbook sections for a question: what to do, step by step."""
    return _search(ctx, args, "runbook")


def search_incidents(ctx: ToolContext, args: SearchArgs) -> Findings:
    """Past incidents like the question: what happened before and how it was resolved."""
    return _search(ctx, args, "incident")


SEARCH_RUNBOOKS = Tool(
    "search_runbooks",
    "Search the operations runbooks for what to do in a situation.",
    SearchArgs,
    search_runbooks,
)
SEARCH_INCIDENTS = Tool(
    "search_incidents",
    "Search past incidents for similar cases, their root causes and resolutions.",
    SearchArgs,
    search_incidents,
)

AGENT = Agent("guide", (SEARCH_RUNBOOKS, SEARCH_INCIDENTS))
