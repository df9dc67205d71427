"""The agents group: the routed agents measured on the golden questions, and a root-cause
report per alert.

`agent_benchmark` scores the agents on a frozen copy of the sample (the same facts every
time, and its kill proposals never reach the live action log), with whatever adapter is the
champion now: run it after a promotion to see what the new adapter changed.
`incident_reports` has one dynamic partition per alert, added by the `new_alerts` sensor.
"""

import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_platform.agents.assistant import Assistant
from dagster_platform.agents.evaluation import load_cases, metrics, results_table, run_cases
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.incident_report import AlertNotLanded, build_report, read_alert
from dagster_platform.agents.tools import ToolContext
from dagster_platform.lib.tracking import log_run
from resources import (
    WAREHOUSE_POOL,
    DataFolderResource,
    KafkaResource,
    KnowledgeResource,
    LLMResource,
    MLflowResource,
    OntologyResource,
    StateResource,
)

GROUP = "agents"
OWNERS = ["team:ml-platform"]
ALERT_PARTITIONS = dg.DynamicPartitionsDefinition(name="alerts")


class AgentBenchmarkConfig(dg.Config):
    questions: int = Field(
        default=0, ge=0, description="Only the first N golden questions (0: all of them)."
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "mlflow"},
    owners=OWNERS,
    deps=["document_chunks", "ontology_objects"],
    check_specs=[
        dg.AssetCheckSpec(
            "seed_scenario_routed",
            asset="agent_benchmark",
            description="The seed's five scenario questions route as the seed says.",
        )
    ],
)
def agent_benchmark(
    context: dg.AssetExecutionContext,
    config: AgentBenchmarkConfig,
    llm: LLMResource,
    state: StateResource,
    data_folder: DataFolderResource,
    ontology: OntologyResource,
    knowledge: KnowledgeResource,
    mlflow: MLflowResource,
):
    """The golden questions through the router and the agents: routing accuracy, tool-call
    accuracy against the expected tools, grounding (expected facts in the answer and in the
    evidence) and latency, as a table here and a run in the MLflow experiment
    `agent_benchmark`."""
    settings = state.settings(
        data_folder=data_folder, ontology=ontology, knowledge=knowledge, mlflow=mlflow
    )
    cases = load_cases(data_folder.path / "golden_questions.jsonl")
    if config.questions:
        cases = cases[: config.questions]
    with tempfile.TemporaryDirectory(prefix="agent-benchmark-") as folder:
        frozen = build_frozen_state(settings, Path(folder) / "state")
        assistant = Assistant.open(frozen, llm_config=llm.config(mlflow))
        try:
            served = assistant.llm.refresh() if assistant.llm else None
            results = run_cases(assistant, cases)
        finally:
            assistant.close()
    scores = metrics(results)
    table = results_table(results)
    served_label = served.label if served else "no LLM"
    run = log_run(
        mlflow.uri,
        "agent_benchmark",
        run_name=f"agents {context.run_id[:8]}",
        params={"served": served_label, "questions": len(results)},
        metrics={k: float(v) for k, v in scores.items()},
        texts={"agent_benchmark.md": table},
        tags={"dagster_run_id": context.run_id},
        artifact_root=mlflow.artifacts,
    )
    seed_ok = scores["routing_seed_correct"]
    yield dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.float(float(v)) for k, v in scores.items()},
            "served": served_label,
            "mlflow_run_id": run.run_id,
            "results": dg.MetadataValue.md(table),
        }
    )
    yield dg.AssetCheckResult(
        check_name="seed_scenario_routed",
        passed=seed_ok == 5,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"seed_questions_routed_right": seed_ok},
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "python"},
    owners=OWNERS,
    pool=WAREHOUSE_POOL,
    partitions_def=ALERT_PARTITIONS,
    deps=["alert_events", "ontology_objects", "document_chunks"],
)
def incident_reports(
    context: dg.AssetExecutionContext,
    state: StateResource,
    data_folder: DataFolderResource,
    ontology: OntologyResource,
    kafka: KafkaResource,
    knowledge: KnowledgeResource,
) -> dg.MaterializeResult:
    """A root-cause report per alert: the alert, its ontology neighbourhood, the top resource
    users, similar past incidents with their resolutions, and a kill of the top suspect
    proposed for a person to approve (never executed here). Also written to
    `reports/incidents/ALERT.md` in the state folder."""
    from dagster_platform.knowledge.base import LazyKnowledge

    settings = state.settings(
        data_folder=data_folder, ontology=ontology, kafka=kafka, knowledge=knowledge
    )
    lazy = LazyKnowledge(settings)
    tools = ToolContext(settings, actor="incident-reports", retriever_factory=lazy)
    try:
        try:
            alert = read_alert(tools, context.partition_key)
        except AlertNotLanded as exc:  # the landing run commits within seconds
            raise dg.RetryRequested(max_retries=5, seconds_to_wait=15) from exc
        report = build_report(tools, alert)
    finally:
        lazy.close()
    folder = state.path / "reports" / "incidents"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{context.partition_key}.md"
    path.write_text(report.markdown, encoding="utf-8")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(report.markdown),
            "path": dg.MetadataValue.path(str(path)),
            "suspects": len(report.suspects),
            "proposed_actions": dg.MetadataValue.json(report.proposed_actions),
            "similar_incidents": dg.MetadataValue.json(report.similar_incidents),
        }
    )


agent_assets = [agent_benchmark, incident_reports]
