"""Retrieval measured on the golden questions: hit@k and MRR per mode, route and language.

A question counts when it names the documents that answer it (`expected_doc_ids`); hits are
judged per document, so three chunks of one runbook in the top 3 count once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from dagster_platform.knowledge.retriever import Hit, documents_in_order
from dagster_platform.lib.markdown import markdown_table

KS = (1, 3, 5)
T = TypeVar("T")

Search = Callable[[str, int], Sequence[Hit]]


@dataclass(frozen=True)
class GoldenQuestion:
    question_id: str
    question: str
    language: str
    route: str
    expected_doc_ids: tuple[str, ...]


@dataclass(frozen=True)
class Score:
    """One row of the report: a mode on a slice of the questions."""

    mode: str
    slice: str
    questions: int
    hits: dict[int, float]  # k → share of questions with an expected document in the top k
    mrr: float


def read_golden(path: Path, build: Callable[[dict[str, Any]], T]) -> list[T]:
    """Each line of a golden-question file through `build`; a malformed line names itself."""
    built = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            built.append(build(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a golden question: {exc}") from exc
    return built


def load_golden(path: Path) -> list[GoldenQuestion]:
    """The questions that name their answering documents."""
    questions = read_golden(
        path,
        lambda record: GoldenQuestion(
            record["question_id"],
            record["question"],
            record.get("language", "unknown"),
            record.get("route", "unknown"),
            tuple(record.get("expected_doc_ids") or ()),
        ),
    )
    return [question for question in questions if question.expected_doc_ids]


def reciprocal_rank(ranked_docs: Sequence[str], expected: Iterable[str]) -> float:
    wanted = set(expected)
    for rank, doc_id in enumerate(ranked_docs, start=1):
        if doc_id in wanted:
            return 1.0 / rank
    return 0.0


def evaluate(
    searches: dict[str, Search], questions: Sequence[GoldenQuestion], depth: int = 10
) -> list[Score]:
    """Every mode on every question once; scored overall, per route and per language."""
    ranks: dict[str, dict[str, float]] = {}
    for mode, search in searches.items():
        ranks[mode] = {
            q.question_id: reciprocal_rank(
                documents_in_order(search(q.question, depth)), q.expected_doc_ids
            )
            for q in questions
        }
    slices: dict[str, list[GoldenQuestion]] = {"overall": list(questions)}
    for q in questions:
        slices.setdefault(f"route={q.route}", []).append(q)
        slices.setdefault(f"language={q.language}", []).append(q)
    scores = []
    for mode, by_question in ranks.items():
        for name, members in slices.items():
            rr = [by_question[q.question_id] for q in members]
            scores.append(
                Score(
                    mode,
                    name,
                    len(rr),
                    {k: sum(r >= 1.0 / k for r in rr) / len(rr) for k in KS},
                    sum(rr) / len(rr),
                )
            )
    return scores


def scores_table(scores: Sequence[Score]) -> str:
    rows = [
        {"mode": s.mode, "slice": s.slice, "questions": s.questions}
        | {f"hit@{k}": f"{s.hits[k]:.3f}" for k in KS}
        | {"MRR": f"{s.mrr:.3f}"}
        for s in scores
    ]
    return markdown_table(pl.DataFrame(rows))


def metrics(scores: Sequence[Score]) -> dict[str, float]:
    """Flat metric names for MLflow, e.g. `hybrid.overall.hit_at_5`."""
    flat = {}
    for s in scores:
        prefix = f"{s.mode}.{s.slice.replace('=', '_')}"
        flat.update({f"{prefix}.hit_at_{k}": v for k, v in s.hits.items()})
        flat[f"{prefix}.mrr"] = s.mrr
    return flat


def score_of(scores: Sequence[Score], mode: str, slice_: str = "overall") -> Score:
    return next(s for s in scores if s.mode == mode and s.slice == slice_)
