"""The agents measured on the golden questions: routing, tool calls, grounding, latency.

- Routing accuracy: the chosen route equals the expected one.
- Tool-call accuracy: every expected tool was called (a question without expected tools is
  not counted); tool-call precision: the share of the calls made that were expected.
- Grounding: the share of expected facts that are in the answer *and* in the evidence the
  tools returned (facts and retrieved passages): present but unsupported does not count.
- Headline: the share whose first paragraph carries the question's headline fact (a golden
  record's `headline_fact`; else its first expected document for a guide question, its first
  expected fact otherwise), and the share whose headline is the model's own, passed by the
  gate, and carries it: what fine-tuning on the headline task should raise.
The seed scenario's questions run in one session, in step order, as a person would ask them;
every other question gets its own session.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dagster_platform.agents.assistant import Answer, Assistant
from dagster_platform.knowledge.evaluation import read_golden
from dagster_platform.lib.markdown import markdown_table


@dataclass(frozen=True)
class AgentCase:
    question_id: str
    question: str
    language: str
    route: str
    expected_facts: tuple[str, ...]
    expected_tools: tuple[str, ...]
    scenario_step: int | None
    headline_fact: str | None = None


def _headline_fact(record: dict[str, Any]) -> str | None:
    if record.get("headline_fact"):
        return record["headline_fact"]
    first = (record.get("expected_doc_ids") or [None])[0] if record["route"] == "guide" else None
    return first or next(iter(record.get("expected_facts") or ()), None)


def load_cases(path: Path) -> list[AgentCase]:
    return read_golden(
        path,
        lambda record: AgentCase(
            record["question_id"],
            record["question"],
            record.get("language", "unknown"),
            record["route"],
            tuple(record.get("expected_facts") or ()),
            tuple(record.get("expected_tools") or ()),
            record.get("scenario_step"),
            _headline_fact(record),
        ),
    )


@dataclass(frozen=True)
class CaseResult:
    case: AgentCase
    route: str
    tools: tuple[str, ...]
    facts_present: int
    facts_supported: int
    latency_ms: float
    answer: str
    headline: str = ""
    headline_source: str = "composed"

    @property
    def route_ok(self) -> bool:
        return self.route == self.case.route

    @property
    def tools_ok(self) -> bool | None:
        if not self.case.expected_tools:
            return None
        return set(self.case.expected_tools) <= set(self.tools)

    @property
    def tool_precision(self) -> float | None:
        if not self.case.expected_tools or not self.tools:
            return None
        return sum(t in self.case.expected_tools for t in self.tools) / len(self.tools)

    @property
    def headline_ok(self) -> bool | None:
        """The headline fact in the first paragraph (None: the case names none)."""
        fact = self.case.headline_fact
        return None if not fact else _normal(fact) in _normal(self.headline)

    @property
    def model_headline_ok(self) -> bool | None:
        """The model's own headline was shown (the gate passed it) and carries the fact."""
        ok = self.headline_ok
        return None if ok is None else ok and self.headline_source == "model"

    @property
    def grounding(self) -> float | None:
        if not self.case.expected_facts:
            return None
        return self.facts_supported / len(self.case.expected_facts)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def score(case: AgentCase, answer: Answer) -> CaseResult:
    record = answer.interaction
    text = _normal(answer.text)
    evidence = _normal(
        "\n".join(
            [fact for result in answer.results for fact in result.facts]
            + [context["text"] for context in record.contexts]
        )
    )
    present = [f for f in case.expected_facts if _normal(f) in text]
    supported = [f for f in present if _normal(f) in evidence]
    return CaseResult(
        case,
        record.route or "",
        tuple(call["tool"] for call in record.tool_calls),
        len(present),
        len(supported),
        record.latency_ms or 0.0,
        answer.text,
        record.headline or "",
        record.headline_source or "composed",
    )


def scenario_cases(cases: Sequence[AgentCase]) -> list[AgentCase]:
    """The seed scenario's questions, in the order of its steps."""
    return sorted((c for c in cases if c.scenario_step), key=lambda c: c.scenario_step or 0)


def run_cases(assistant: Assistant, cases: Sequence[AgentCase]) -> list[CaseResult]:
    scenario = scenario_cases(cases)
    results = [score(c, assistant.ask(c.question, "golden-seed-scenario")) for c in scenario]
    for case in cases:
        if not case.scenario_step:
            results.append(score(case, assistant.ask(case.question, f"golden-{case.question_id}")))
    return results


def _mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 4) if values else 0.0


def metrics(results: Sequence[CaseResult]) -> dict[str, Any]:
    latencies = sorted(r.latency_ms for r in results)
    tool_scored = [r.tools_ok for r in results if r.tools_ok is not None]
    precision = [r.tool_precision for r in results if r.tool_precision is not None]
    grounded = [r.grounding for r in results if r.grounding is not None]
    seed = [r for r in results if r.case.scenario_step]
    headlines = [r for r in results if r.headline_ok is not None]
    return {
        "questions": len(results),
        "routing_accuracy": _mean([float(r.route_ok) for r in results]),
        "routing_seed_correct": sum(r.route_ok for r in seed),
        "tool_call_accuracy": _mean([float(ok) for ok in tool_scored]),
        "tool_call_precision": _mean(precision),
        "tool_call_questions": len(tool_scored),
        "grounding": _mean(grounded),
        "headline_correct": _mean([float(bool(r.headline_ok)) for r in headlines]),
        "headline_pass_rate": _mean([float(bool(r.model_headline_ok)) for r in headlines]),
        "headline_questions": len(headlines),
        "latency_p50_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "latency_p95_ms": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 1)
        if latencies
        else 0.0,
    }


def results_table(results: Sequence[CaseResult]) -> str:
    """One row per question, a failed route marked ✗, as Markdown for the run's artifact."""
    frame = pl.DataFrame(
        {
            "question": [r.case.question_id for r in results],
            "expected route": [r.case.route for r in results],
            "route": [r.route + ("" if r.route_ok else " ✗") for r in results],
            "tools": [", ".join(r.tools) or "-" for r in results],
            "grounding": ["-" if r.grounding is None else f"{r.grounding:.2f}" for r in results],
            "headline": [
                "-"
                if r.headline_ok is None
                else ("✓" if r.headline_ok else "✗")
                + (" model" if r.headline_source == "model" else "")
                for r in results
            ],
            "ms": [f"{r.latency_ms:.0f}" for r in results],
        }
    )
    return markdown_table(frame, width=100)  # a whole tool list (four calls) fits
