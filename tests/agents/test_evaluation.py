"""The benchmark's per-question table, as the agent benchmark asset logs it."""

from __future__ import annotations

from dagster_platform.agents.evaluation import AgentCase, CaseResult, results_table


def _case(question_id: str, route: str, facts: tuple[str, ...] = ()) -> AgentCase:
    return AgentCase(question_id, "?", "en", route, facts, (), None)


def test_the_results_table_marks_a_wrong_route_and_keeps_every_tool() -> None:
    tools = ("top_spark_jobs", "find_spark_jobs", "spark_job_details", "propose_kill")
    results = [
        CaseResult(
            _case("q1", "infra", ("a", "b")), "infra", ("cluster_utilisation",), 2, 1, 12.4, ""
        ),
        CaseResult(_case("q2", "guide"), "data", tools, 0, 0, 7.6, ""),
    ]
    assert results_table(results).splitlines() == [
        "| question | expected route | route | tools | grounding | ms |",
        "| --- | --- | --- | --- | --- | --- |",
        "| q1 | infra | infra | cluster_utilisation | 0.50 | 12 |",
        f"| q2 | guide | data ✗ | {', '.join(tools)} | - | 8 |",
    ]
    assert results_table([]).splitlines()[0].startswith("| question |")
