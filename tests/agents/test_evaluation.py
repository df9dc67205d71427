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
        "| question | expected route | route | tools | grounding | headline | ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| q1 | infra | infra | cluster_utilisation | 0.50 | - | 12 |",
        f"| q2 | guide | data ✗ | {', '.join(tools)} | - | - | 8 |",
    ]
    assert results_table([]).splitlines()[0].startswith("| question |")


def test_the_headline_columns_say_whether_the_fact_led_and_who_wrote_it() -> None:
    case = AgentCase("q3", "?", "en", "infra", ("etl-prod",), (), None, "etl-prod")
    composed = CaseResult(case, "infra", (), 1, 1, 5.0, "etl-prod: 90.6%", "etl-prod: 90.6%")
    model = CaseResult(case, "infra", (), 1, 1, 5.0, "x", "etl-prod is busy", "model")
    missed = CaseResult(case, "infra", (), 0, 0, 5.0, "x", "staging is idle", "model")
    assert [r.headline_ok for r in (composed, model, missed)] == [True, True, False]
    assert [r.model_headline_ok for r in (composed, model, missed)] == [False, True, False]
    table = results_table([composed, model, missed])
    assert "| ✓ |" in table and "| ✓ model |" in table and "| ✗ model |" in table
