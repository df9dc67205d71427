"""The console's HTML: every field that comes from data is escaped, the answer streams headline
first, and the served-by line names the model, adapter and backend."""

from __future__ import annotations

import itertools

from dagster_platform.agents.assistant import Answer
from dagster_platform.agents.interactions import Interaction
from dagster_platform.agents.tools import ToolResult
from dagster_platform.agents.tools.base import Context
from dagster_platform.console.views import answer_stream, markdown_as_text, served_by_html

SCRIPT = "<script>window.__pwned=1</script>"
IMAGE = '<img src=x onerror="window.__pwned=2">'


def _answer(**record) -> Answer:
    interaction = Interaction("ia-1", "s", "q", "answered", **record)
    results = [
        ToolResult("top_spark_jobs", {}, True, "", [f"job {IMAGE} uses 90%"], [], [], []),
        ToolResult(
            "search_runbooks", {}, True, "", [], [],
            [Context("c1", "runbook", f"Restart it.\n\n# Not a heading {SCRIPT}", "rb-x > Fix")],
            [],
        ),
        ToolResult.failure("search_incidents", {}, f"index missing {SCRIPT}"),
    ]  # fmt: skip
    return Answer(interaction, f"headline {SCRIPT}", None, results)  # type: ignore[arg-type]


def test_markup_from_the_answer_the_facts_and_the_passages_is_escaped() -> None:
    parts = answer_stream(_answer(headline=f"busiest is etl-prod {SCRIPT}", route="guide"))
    final = parts[-1]
    assert "<script" not in final and "<img" not in final
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in final
    assert "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in final
    assert "<br><br># Not a heading" in final  # a blank line never hands over to Markdown
    assert "could not get search_incidents: index missing &lt;script&gt;" in final


def test_the_answer_streams_headline_then_evidence_then_passages_then_who() -> None:
    parts = answer_stream(_answer(headline="busiest is etl-prod"))
    assert parts[0] == '<div class="headline">busiest is etl-prod</div>'
    assert "Evidence: 1 facts from top_spark_jobs, search_runbooks" in parts[1]
    assert "passages" not in parts[1] and "Cited passages: rb-x &gt; Fix" in parts[2]
    assert "served-by" not in parts[2] and "served-by" in parts[-1]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(parts))


def test_who_answered_is_named() -> None:
    served = served_by_html(
        _answer(
            model="ops-assistant", adapter="ops-assistant-v3", adapter_version="3",
            backend="vllm-server", route="data", route_source="llm", headline_source="model",
            latency_ms=1234.0,
        )
    )  # fmt: skip
    assert "model ops-assistant · adapter ops-assistant-v3 v3 · backend vllm-server" in served
    assert "route data (llm) · headline model · 1.23 s" in served
    degraded = served_by_html(_answer(llm_error="vLLM did not answer"))
    assert "no LLM: composed from the tools&#x27; facts" in degraded
    assert "LLM unavailable: vLLM did not answer" in degraded


def test_a_markdown_report_keeps_its_tables_and_loses_its_tags() -> None:
    shown = markdown_as_text(f"| a | b |\n|---|---|\n| {SCRIPT} | **x** |")
    assert "| &lt;script&gt;" in shown and "**x**" in shown and "<script" not in shown


def test_an_executed_card_says_the_target_reports_its_new_state_later() -> None:
    from datetime import UTC, datetime

    from dagster_platform.console.reads import ActionView
    from dagster_platform.console.views import action_card
    from dagster_platform.ontology.actions import ActionStatus

    now = datetime(2026, 12, 4, 20, 47, tzinfo=UTC)

    def card(status: str) -> str:
        action = ActionStatus(
            "act-1", "kill_spark_job", "spark_job", "app_1", {}, status, "assistant", now,
            f"why {SCRIPT}", "alice", now, "command on ops-actions[0] at 1", None,
        )  # fmt: skip
        return action_card(ActionView(action, [], "sre", "RUNNING", True, None))

    assert "state now: <b>RUNNING</b>" in card("executed")
    assert "once the target reports it" in card("executed")
    assert "once the target reports it" not in card("proposed")
    assert "<script" not in card("executed")
