"""What a person reads first, measured on the frozen sample: the golden questions, with the
seed scenario asked as one session and its kill approved (by a holder of the role, executed
through a private broker) before "did it drop?".

Figures:
- headline correctness: the question's headline fact in the first paragraph;
- numbers: for the questions below with a check, every value separate SQL over the warehouse
  returns must appear in the headline as the answer writes it (share of checks correct);
- language: the headline in the question's language (English for a third language);
- gate pass rate: the share of the model's headlines the gate let through;
- empty answers; latency p50/p95 with the model's headline and on the composed path alone,
  and the raw limit: generating the headline alone (the model's decode speed bounds it).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine, private_broker
from dagster_platform.agents.assistant import Answer, Assistant
from dagster_platform.agents.evaluation import AgentCase, load_cases, scenario_cases
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.headline import headline_prompt, language_of
from dagster_platform.kafka.topics import ensure_topics
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.llm.base import GenerationConfig
from dagster_platform.ontology.actions import approve
from dagster_platform.ontology.loader import load_ontology
from dagster_platform.ontology.roles import load_roles
from dagster_platform.settings import Settings, get_settings

APPROVER = "alice"  # holds the sre role in data/roles.yaml
RAW_PROMPTS = 8
_WORKERS = "FROM hosts WHERE role = 'worker' AND cluster_id = "
_PCT = "printf('%.1f', {})"
# question id → SQL whose values the headline must show (numbers and names)
CHECKS: dict[str, str] = {
    "gq-001": f"SELECT {_PCT.format('avg(cpu_usage_pct)')}, "
    f"{_PCT.format('avg(memory_usage_pct)')} {_WORKERS}'etl-prod'",
    "gq-002": "SELECT list(printf('%.1f', cpu_share_pct) ORDER BY cpu_share_pct DESC)[1:3] "
    "FROM spark_jobs WHERE cluster_id = 'etl-prod' AND state = 'RUNNING'",
    "gq-006": f"SELECT {_PCT.format('disk_usage_pct')} FROM hosts "
    "WHERE host_id = 'etl-prod-worker-07'",
    "gq-009": "SELECT count(*)::VARCHAR FROM hosts WHERE status <> 'healthy'",
    "gq-012": f"SELECT arg_max(host_id, cpu_usage_pct), {_PCT.format('max(cpu_usage_pct)')} "
    f"{_WORKERS}'etl-prod'",
    "gq-015": "SELECT total_vcores::VARCHAR, total_memory_gb::INT::VARCHAR FROM clusters "
    "WHERE cluster_id = 'analytics-prod'",
    "gq-018": f"SELECT status, {_PCT.format('cpu_usage_pct')} FROM hosts "
    "WHERE host_id = 'staging-worker-04'",
    "gq-021": f"SELECT count(*)::VARCHAR {_WORKERS}'etl-prod' AND cpu_usage_pct >= 95",
    "gq-024": f"SELECT {_PCT.format('memory_usage_pct')} FROM hosts "
    "WHERE host_id = 'etl-prod-master-01'",
    "gq-027": "SELECT printf('%.1f', c.hdfs_capacity_tb), arg_max(h.host_id, h.disk_usage_pct), "
    "printf('%.1f', max(h.disk_usage_pct)) FROM clusters c JOIN hosts h USING (cluster_id) "
    "WHERE cluster_id = 'etl-prod' AND h.role = 'worker' GROUP BY c.hdfs_capacity_tb",
    "gq-028": "SELECT arg_max(application_id, cpu_share_pct), printf('%.1f', max(cpu_share_pct)) "
    "FROM spark_jobs WHERE cluster_id = 'analytics-prod' AND state = 'RUNNING'",
    "gq-033": f"SELECT {_PCT.format('avg(memory_usage_pct)')} {_WORKERS}'etl-prod'",
    "gq-036": "SELECT string_agg(host_id, ' '), printf('%.1f', max(disk_usage_pct)) FROM hosts "
    "WHERE cluster_id = 'analytics-prod' AND disk_usage_pct >= 80",
    "gq-037": "SELECT count(*)::VARCHAR, sum(vcores)::VARCHAR, any_value(c.total_vcores)::VARCHAR "
    "FROM spark_jobs j JOIN clusters c USING (cluster_id) "
    "WHERE cluster_id = 'etl-prod' AND state = 'RUNNING'",
    "gq-039": f"SELECT {_PCT.format('cpu_usage_pct')}, {_PCT.format('memory_usage_pct')} "
    "FROM hosts WHERE host_id = 'analytics-prod-worker-03'",
    "gq-044": f"SELECT arg_max(host_id, cpu_usage_pct), {_PCT.format('max(cpu_usage_pct)')} "
    f"{_WORKERS}'staging'",
    "gq-048": "SELECT arg_max(queue, memory), memory::INT::VARCHAR FROM (SELECT queue, "
    "sum(memory_gb) AS memory FROM spark_jobs WHERE cluster_id = 'etl-prod' "
    "AND state = 'RUNNING' GROUP BY queue) GROUP BY memory ORDER BY memory DESC LIMIT 1",
}


def _progress(message: str) -> None:
    print(f"[answers] {message}", file=sys.stderr, flush=True)


def _values(settings: Settings) -> dict[str, list[str]]:
    """Each check's values, read with SQL of its own (not the tools')."""
    found: dict[str, list[str]] = {}
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        for qid, sql in CHECKS.items():
            row = conn.execute(sql).fetchone()
            values: list[str] = []
            for value in row:
                if isinstance(value, list):
                    values += [str(v) for v in value]
                else:
                    values += str(value).split(" ")
            found[qid] = values
    return found


def _approve_kills(settings: Settings, answer: Answer, bootstrap: str) -> list[str]:
    """The person in the loop: the scenario's proposals approved and executed."""
    loaded = load_ontology(settings.ontology_dir)
    roles = load_roles(settings.roles_file)
    done = []
    with open_warehouse(settings.warehouse_path) as conn:
        for action_id in answer.interaction.proposed_actions:
            status = approve(conn, loaded, roles, action_id, APPROVER, bootstrap_servers=bootstrap)
            done.append(f"{action_id}: {status.status}")
    return done


def _ask(
    assistant: Assistant, cases: Sequence[AgentCase], settings: Settings, bootstrap: str
) -> tuple[list[tuple[AgentCase, Answer, float]], list[str]]:
    """The scenario in one session with the approval after its kill step, then the rest."""
    asked: list[tuple[AgentCase, Answer, float]] = []
    approvals: list[str] = []
    scenario = scenario_cases(cases)
    for case in [*scenario, *(c for c in cases if not c.scenario_step)]:
        session = "bench-answers-scenario" if case.scenario_step else None
        started = time.perf_counter()
        answer = assistant.ask(case.question, session)
        asked.append((case, answer, time.perf_counter() - started))
        if case.scenario_step and answer.interaction.proposed_actions:
            approvals = _approve_kills(settings, answer, bootstrap)
    return asked, approvals


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(share * 100) - 1]


def _figures(
    asked: Sequence[tuple[AgentCase, Answer, float]], values: dict[str, list[str]]
) -> dict[str, Any]:
    correct = numbers_ok = numbers_checked = language_ok = empty = 0
    misses: list[str] = []
    for case, answer, _ in asked:
        headline = answer.interaction.headline or ""
        if case.headline_fact and case.headline_fact.lower() in headline.lower():
            correct += 1
        elif case.headline_fact:
            misses.append(case.question_id)
        wanted = "en" if language_of(case.question) == "other" else language_of(case.question)
        language_ok += language_of(headline.removeprefix("(I answer")) == wanted
        empty += not answer.text.strip()
        if case.question_id in values:
            numbers_checked += 1
            numbers_ok += all(v in headline for v in values[case.question_id])
    with_fact = sum(bool(c.headline_fact) for c, _, _ in asked)
    seconds = [s for _, _, s in asked]
    return {
        "questions": len(asked),
        "headline_correct": round(correct / with_fact, 4) if with_fact else 0.0,
        "headline_misses": misses,
        "numbers_correct": round(numbers_ok / numbers_checked, 4) if numbers_checked else 0.0,
        "numbers_checked": numbers_checked,
        "language_match": round(language_ok / len(asked), 4),
        "empty_answers": empty,
        "latency_p50_s": round(_percentile(seconds, 0.5), 3),
        "latency_p95_s": round(_percentile(seconds, 0.95), 3),
    }


def _raw_generation(
    assistant: Assistant, asked: Sequence[tuple[AgentCase, Answer, float]]
) -> float:
    """The raw limit: generating the headline alone, from the same prompts (p50 seconds)."""
    seconds = []
    for _, answer, _ in asked[:RAW_PROMPTS]:
        prompt = headline_prompt(answer.interaction.question, answer.interaction.evidence)
        started = time.perf_counter()
        assistant.llm.client.chat(
            prompt,
            GenerationConfig(max_new_tokens=assistant.config.headline_tokens, stop=("\n",)),
        )
        seconds.append(time.perf_counter() - started)
    return round(_percentile(seconds, 0.5), 3)


def measure(
    frozen_dir: Path, settings: Settings, use_llm: bool, bootstrap: str, embed: bool = True
) -> dict[str, Any]:
    """One pass over the golden questions on a pristine frozen state, with or without the
    model's headline."""
    frozen = build_frozen_state(settings, frozen_dir, embed=embed)  # restored as built
    values = _values(frozen)
    cases = load_cases(frozen.data_dir / "golden_questions.jsonl")
    assistant = Assistant.open(frozen, use_llm=use_llm)
    try:
        assistant.ask("warm-up: how busy is etl-prod?")  # models load on first use
        asked, approvals = _ask(assistant, cases, frozen, bootstrap)
        figures = _figures(asked, values)
        figures["approvals"] = approvals
        if use_llm:
            from_model = [a for _, a, _ in asked if a.interaction.model_headline is not None]
            passed = [a for a in from_model if a.interaction.headline_source == "model"]
            figures["model_headlines"] = len(from_model)
            figures["gate_pass_rate"] = (
                round(len(passed) / len(from_model), 4) if from_model else 0.0
            )
            refusals: dict[str, int] = {}
            for answer in from_model:
                reason = (answer.interaction.headline_refused or "passed").split(":")[0]
                refusals[reason] = refusals.get(reason, 0) + 1
            figures["gate_verdicts"] = dict(sorted(refusals.items(), key=lambda kv: -kv[1]))
            figures["raw_generation_p50_s"] = _raw_generation(assistant, asked)
    finally:
        assistant.close()
    return figures


def run(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-answers-") as folder, private_broker() as broker:
        ensure_topics(broker.bootstrap_servers)
        _progress("the composed path (no model)")
        composed = measure(Path(folder) / "frozen", settings, False, broker.bootstrap_servers)
        _progress("with the model's headline")
        model = measure(Path(folder) / "frozen", settings, True, broker.bootstrap_servers)
    return {
        "name": "answers",
        "composed": composed,
        "model": model,
        "ratio_model_vs_composed_p50": round(
            model["latency_p50_s"] / max(composed["latency_p50_s"], 1e-6), 2
        ),
        "ratio_model_p50_vs_raw_generation": round(
            model["latency_p50_s"] / max(model["raw_generation_p50_s"], 1e-6), 2
        ),
        "bound": "the model's headline generation (decode speed on the CPU); the tools and the "
        "composer take the composed path's time",
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": machine(),
    }
