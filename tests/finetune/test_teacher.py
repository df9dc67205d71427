"""The headline task in the SFT dataset: the composer's teacher pairs over the sample's own
keys (never a golden question), and rated answers' facts with their accepted headline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dagster_platform.agents.evaluation import load_cases
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.headline import HEADLINE_SYSTEM_PROMPT, language_of
from dagster_platform.agents.interactions import Interaction, record
from dagster_platform.finetune.dataset import (
    asked_questions,
    build_dataset,
    feedback_examples,
    normalise,
)
from dagster_platform.finetune.teacher import teacher_examples, teacher_pairs
from dagster_platform.kafka.tables import ensure_all_tables
from dagster_platform.settings import Settings
from tests.support.state import PREPARED_MODELS, SAMPLE_DIR, live_settings

GOLDEN = [c.question for c in load_cases(SAMPLE_DIR / "golden_questions.jsonl")]


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("teacher")
    return build_frozen_state(
        live_settings(root / "live", SAMPLE_DIR), root / "frozen", embed=False
    )


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(PREPARED_MODELS / "SmolLM2-135M-Instruct")


@pytest.mark.models
def test_teacher_pairs_are_the_composers_headlines_and_never_a_golden_question(
    frozen: Settings,
) -> None:
    golden_like = ["현재 etl-prod 가동율 알려줘?", *GOLDEN]
    pairs, skipped = teacher_pairs(frozen, held_out=golden_like)
    assert len(pairs) >= 50
    assert skipped["teacher_held_out"] >= 1  # "현재 etl-prod 가동율 알려줘?" is held out
    asked = {normalise(p.question) for p in pairs}
    assert not asked & {normalise(q) for q in golden_like}
    for pair in pairs:
        assert pair.headline and pair.evidence
        assert language_of(pair.headline) == language_of(pair.question)
    by_question = {p.question: p.headline for p in pairs}
    assert by_question["현재 staging 가동율 알려줘?"].startswith("staging의 사용률은")
    assert (
        by_question["How busy is etl-dev?"]
        == "There is no cluster 'etl-dev'. Did you mean etl-prod?"
    )
    with duckdb.connect(str(frozen.warehouse_path), read_only=True) as conn:
        tables = {t for (t,) in conn.execute("SHOW TABLES").fetchall()}
    assert "action_log" not in tables and "interactions" not in tables  # nothing written


@pytest.mark.models
def test_teacher_examples_are_the_headline_task_in_the_dataset(
    frozen: Settings, tokenizer: Any
) -> None:
    examples, _ = teacher_examples(frozen, held_out=GOLDEN)
    dataset = build_dataset(examples, tokenizer, base_model="SmolLM2-135M-Instruct")
    assert dataset.counts()["source"]["teacher"] == len(dataset.rows) > 0
    row = dataset.rows[0]
    messages = json.loads(row["messages"])
    assert messages[0]["content"] == HEADLINE_SYSTEM_PROMPT
    assert (
        messages[1]["content"].startswith("Question (") and "\nFacts:\n- " in messages[1]["content"]
    )
    asked = asked_questions(dataset.rows)
    assert normalise("How busy is etl-dev?") in asked
    assert not asked & {normalise(q) for q in GOLDEN}


def test_a_rated_answer_with_its_facts_teaches_the_headline(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        ensure_all_tables(conn)
        facts = ["etl-prod: workers' CPU 90.6%, memory 77.4%"]
        for iid, headline in (("ia-1", "etl-prod is the busiest: 90.6%."), ("ia-2", "x")):
            record(
                conn,
                Interaction(
                    iid,
                    "s",
                    "How busy is etl-prod?",
                    "answered",
                    answer=f"{headline}\n\n- {facts[0]}",
                    headline=headline,
                    evidence=facts,
                ),
            )
        conn.execute(
            "INSERT INTO feedback_events (kafka_topic, kafka_partition, kafka_offset, event_id, "
            "ts, feedback_id, interaction_id, rating, correction) VALUES "
            "('llm-feedback', 0, 1, 'e1', now(), 'f1', 'ia-1', 1, NULL), "
            "('llm-feedback', 0, 2, 'e2', now(), 'f2', 'ia-2', -1, "
            "'etl-prod workers run at 90.6% CPU.\n\nThe rest is fine.')"
        )
        examples, _ = feedback_examples(conn)
    headline_rows = [e for e in examples if e.system == HEADLINE_SYSTEM_PROMPT]
    assert {(e.source, e.completion) for e in headline_rows} == {
        ("feedback", "etl-prod is the busiest: 90.6%."),
        ("correction", "etl-prod workers run at 90.6% CPU."),  # the correction's first paragraph
    }
    assert all("Facts:\n- etl-prod: workers' CPU 90.6%" in e.question for e in headline_rows)
