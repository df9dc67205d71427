"""The SFT dataset on a real DuckDB warehouse, the sample runbooks and ontology, and the
packaged SmolLM2 tokenizer."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from transformers import AutoTokenizer

from dagster_platform.agents.interactions import Interaction, ensure_table, record
from dagster_platform.finetune.dataset import (
    SFT_SYSTEM_PROMPT,
    RawExample,
    SFTDataset,
    build_dataset,
    collect_examples,
    enough_examples,
    example_id,
    load_split,
    overlapping_splits,
    personal_data_left,
    write_dataset,
)
from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.kafka.tables import ensure_tables
from dagster_platform.ontology.build import build_objects
from dagster_platform.ontology.loader import load_ontology
from tests.support.state import ONTOLOGY_DIR, SAMPLE_DIR
from tests.support.tiny_models import PREPARED_LLM

BASE = "SmolLM2-135M-Instruct"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(PREPARED_LLM)


@pytest.fixture
def runbooks(tmp_path: Path) -> Path:
    """Two small runbooks, one English and one Korean."""
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "rb-a.md").write_text(
        "---\ntitle: Disk full\nlanguage: en\n---\n# Disk full\n\n## Symptoms\n\nDisk above 95 %."
        "\n\n## Remediation\n\nClean `/data/1/yarn/local` on etl-prod-worker-07.\n",
        encoding="utf-8",
    )
    (folder / "rb-b.md").write_text(
        "---\ntitle: 큐 포화\nlanguage: ko\n---\n# 큐 포화\n\n"
        "## 진단\n\n`yarn queue -status` 로 확인한다.\n",
        encoding="utf-8",
    )
    return folder


class Warehouse:
    """Interactions and feedback rows written with the real DDL."""

    def __init__(self, path: Path):
        self.conn = duckdb.connect(str(path))
        ensure_table(self.conn)
        ensure_tables(self.conn, FEEDBACK_EVENTS)
        self.conn.execute(  # a no-op once FeedbackV1 carries `correction`
            "ALTER TABLE feedback_events ADD COLUMN IF NOT EXISTS correction VARCHAR"
        )
        self.offsets = count()

    def interaction(
        self, interaction_id: str, question: str, answer: str | None, status: str = "answered"
    ) -> None:
        record(self.conn, Interaction(interaction_id, "s-1", question, status, answer=answer))

    def feedback(
        self,
        interaction_id: str,
        rating: int,
        correction: str | None = None,
        minutes: int = 0,
    ) -> None:
        offset = next(self.offsets)
        self.conn.execute(
            "INSERT INTO feedback_events (kafka_topic, kafka_partition, kafka_offset, event_id, "
            "ts, feedback_id, interaction_id, rating, correction) VALUES "
            "('llm-feedback', 0, ?, ?, ?, ?, ?, ?, ?)",
            [
                offset,
                f"e-{offset}",
                T0 + timedelta(minutes=minutes),
                f"f-{offset}",
                interaction_id,
                rating,
                correction,
            ],
        )


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = Warehouse(tmp_path / "warehouse.duckdb")
    yield wh
    wh.conn.close()


def feedback_only(raw: list[RawExample]) -> list[RawExample]:
    return [r for r in raw if r.source in ("feedback", "correction")]


def examples(n: int, start: int = 0) -> list[RawExample]:
    return [
        RawExample("feedback", f"How busy is etl-prod-worker-{i:02d}?", f"CPU at {i} %.")
        for i in range(start, start + n)
    ]


def test_correction_wins_and_unhelpful_ratings_are_skipped(
    warehouse: Warehouse, runbooks: Path
) -> None:
    w = warehouse
    for i in range(1, 9):
        status = "failed" if i == 5 else "answered"
        w.interaction(f"i{i}", f"question {i}", f"answer {i}", status)
    w.interaction("i9", "question 9", "  ", "degraded")
    w.feedback("i1", 1)  # approved
    w.feedback("i2", -1, correction="the right answer 2")  # corrected down vote
    w.feedback("i3", -1)  # down vote alone
    w.feedback("i4", 0)  # neutral
    w.feedback("i5", 1)  # the interaction failed
    w.feedback("i6", 1, minutes=0)
    w.feedback("i6", -1, minutes=5)  # the later vote decides
    w.feedback("i7", -1, minutes=5)
    w.feedback("i7", 1, minutes=0)  # older than the down vote, though stored after it
    w.feedback("i8", 1, correction="  the right answer 8 ")  # a correction wins over a good vote
    w.feedback("i9", 1)  # blank answer
    w.feedback("gone", 1)  # no such interaction

    raw, skipped = collect_examples(w.conn, runbooks)

    rated = {(r.interaction_id, r.source, r.completion) for r in feedback_only(raw)}
    assert rated == {
        ("i1", "feedback", "answer 1"),
        ("i2", "correction", "the right answer 2"),
        ("i8", "correction", "the right answer 8"),
    }
    assert skipped == Counter(
        down_vote=3, neutral=1, not_answered=2, unknown_interaction=1, superseded=2
    )


def test_missing_tables_give_no_feedback_examples(tmp_path: Path, runbooks: Path) -> None:
    with duckdb.connect(str(tmp_path / "empty.duckdb")) as conn:
        raw, skipped = collect_examples(conn, runbooks)
        assert feedback_only(raw) == []
        assert skipped == Counter()
        assert {r.source for r in raw} == {"runbook"}
        ensure_tables(conn, FEEDBACK_EVENTS)  # feedback landed, interactions not yet
        conn.execute(
            "INSERT INTO feedback_events (kafka_topic, kafka_partition, kafka_offset, event_id, "
            "ts, feedback_id, interaction_id, rating) VALUES "
            "('llm-feedback', 0, 0, 'e', now(), 'f', 'i1', 1)"
        )
        raw, skipped = collect_examples(conn, runbooks)
    assert feedback_only(raw) == []
    assert skipped == Counter(unknown_interaction=1)


def test_a_missing_runbook_folder_is_a_clear_error(warehouse: Warehouse, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="runbook folder not found"):
        collect_examples(warehouse.conn, tmp_path / "nowhere")


@pytest.mark.models
def test_personal_data_is_scrubbed_and_counted(
    warehouse: Warehouse, runbooks: Path, tokenizer: Any, tmp_path: Path
) -> None:
    w = warehouse
    w.interaction(
        "i1", "I am kim.minji@example.com, why is etl-prod slow?", "Queue root.etl.daily."
    )
    w.interaction("i2", "Who owns analytics-prod?", "Call 010-2345-6789 (on-call).")
    w.interaction("i3", "Restart the job", "Done.")
    w.interaction("i4", "curl with Authorization: Bearer a1b2c3d4e5f6g7h8?", "Use the API.")
    w.interaction("i5", "Which key?", "The key AKIAIOSFODNN7EXAMPLE is in the vault.")
    for i in range(1, 6):
        w.feedback(
            f"i{i}", 1, correction="Owner RRN 900101-1234567, ask first." if i == 3 else None
        )
    raw, skipped = collect_examples(w.conn, runbooks)

    dataset = build_dataset(raw, tokenizer, base_model=BASE, skipped=skipped)

    assert dataset.scrubbed == Counter(
        email=1, phone=1, korean_rrn=1, bearer_token=1, aws_access_key=1
    )
    assert personal_data_left(dataset) == []
    path = write_dataset(dataset, tmp_path / "datasets")
    stored = "".join(p.read_text(encoding="utf-8") for p in path.glob("*.jsonl"))
    stored += json.dumps(dataset.rows, ensure_ascii=False)
    for secret in ("kim.minji", "2345-6789", "1234567", "a1b2c3d4", "AKIAIOSF"):
        assert secret not in stored
    for placeholder in ("<EMAIL>", "<PHONE>", "<KOREAN_RRN>", "<BEARER_TOKEN>", "<AWS_ACCESS_KEY>"):
        assert placeholder in stored
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["scrubbed"] == dict(sorted(dataset.scrubbed.items()))


@pytest.mark.models
def test_the_check_finds_personal_data_put_back(tokenizer: Any) -> None:
    dataset = build_dataset(examples(3), tokenizer, base_model=BASE)
    dataset.rows[0]["completion"] += " mail ops@example.com"
    assert personal_data_left(dataset) == [(dataset.rows[0]["example_id"], ["email"])]


@pytest.mark.models
def test_duplicates_collapse_and_a_correction_wins(tokenizer: Any) -> None:
    raw = [
        RawExample("runbook", "How do I  restart a NodeManager?", "Run `yarn --daemon start`."),
        RawExample("feedback", "how do i restart a nodemanager?", "run `yarn --daemon start`. "),
        RawExample("correction", "HOW do I restart a\tNodeManager?", "Run `yarn --daemon start`."),
        RawExample("ontology", "What is host etl-prod-worker-02?", "A worker."),
    ]
    dataset = build_dataset(raw, tokenizer, base_model=BASE)
    assert len(dataset.rows) == 2
    assert dataset.skipped == Counter(duplicate=2)
    (restart,) = [r for r in dataset.rows if "restart" in r["messages"]]
    assert restart["source"] == "correction"
    assert restart["example_id"] == example_id(
        "how do i restart a nodemanager?", "run `yarn --daemon start`."
    )


@pytest.mark.models
def test_a_question_asked_twice_keeps_the_newest_answer(tokenizer: Any) -> None:
    question = "Which job uses the most CPU on etl-prod?"
    raw = [
        RawExample("feedback", question, "application_1700000000000_0042", "i2", T0 + timedelta(1)),
        RawExample("feedback", question, "application_1700000000000_0007", "i1", T0),
        RawExample("runbook", question, "See rb-high-cpu."),
    ]
    dataset = build_dataset(raw, tokenizer, base_model=BASE)
    (row,) = dataset.rows
    assert (row["interaction_id"], row["completion"]) == ("i2", "application_1700000000000_0042")
    assert dataset.skipped == Counter(same_question=2)
    assert overlapping_splits(dataset) == []


@pytest.mark.models
def test_the_overlap_check_finds_an_example_in_both_splits(tokenizer: Any) -> None:
    dataset = build_dataset(examples(40), tokenizer, base_model=BASE)
    train = next(r for r in dataset.rows if r["split"] == "train")
    assert overlapping_splits(dataset) == []
    dataset.rows.append({**train, "split": "eval"})
    moved = {**train, "example_id": "f" * 16, "completion": "other", "split": "eval"}
    dataset.rows.append(moved)
    assert overlapping_splits(dataset) == sorted([train["example_id"], "f" * 16])


@pytest.mark.models
def test_an_example_keeps_its_split_when_others_are_added(tokenizer: Any) -> None:
    small = build_dataset(examples(30), tokenizer, base_model=BASE)
    large = build_dataset(examples(200), tokenizer, base_model=BASE)
    splits = {r["example_id"]: r["split"] for r in large.rows}
    assert {r["example_id"]: r["split"] for r in small.rows}.items() <= splits.items()
    assert all(
        split == ("eval" if int(eid, 16) % 100 < 10 else "train") for eid, split in splits.items()
    )
    assert 5 <= large.counts()["split"]["eval"] <= 40  # about 10 % of 200


@pytest.mark.models
def test_the_version_changes_with_the_examples_only(tokenizer: Any) -> None:
    raw = examples(10)
    first = build_dataset(raw, tokenizer, base_model=BASE)
    assert build_dataset(list(reversed(raw)), tokenizer, base_model=BASE).version == first.version
    rated = [replace(r, interaction_id="x", rated_at=T0) for r in raw]
    assert build_dataset(rated, tokenizer, base_model=BASE).version == first.version
    changed = [*raw[:-1], replace(raw[-1], completion="CPU at 99 %.")]
    assert build_dataset(changed, tokenizer, base_model=BASE).version != first.version
    assert build_dataset(raw[:-1], tokenizer, base_model=BASE).version != first.version
    assert len(first.version) == 16
    assert int(first.version, 16) >= 0


@pytest.mark.models
def test_too_few_examples_fail_the_check(tokenizer: Any) -> None:
    few = build_dataset(examples(3), tokenizer, base_model=BASE)
    passed, detail = enough_examples(few, 20)
    assert not passed
    assert "at least 20 train" in detail
    many = build_dataset(examples(60), tokenizer, base_model=BASE)
    counts = many.counts()["split"]
    assert enough_examples(many, counts["train"]) == (
        True,
        f"{counts['train']} train and {counts['eval']} eval examples "
        f"(at least {counts['train']} train and 1 eval needed)",
    )
    assert enough_examples(many, counts["train"] + 1)[0] is False
    empty = build_dataset([], tokenizer, base_model=BASE)
    assert empty.rows == []
    assert enough_examples(empty, 1)[0] is False


@pytest.mark.models
def test_rows_are_formatted_with_the_chat_template(tokenizer: Any) -> None:
    dataset = build_dataset(examples(5), tokenizer, base_model=BASE)
    for row in dataset.rows:
        messages = json.loads(row["messages"])
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"] == SFT_SYSTEM_PROMPT
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert row["prompt"] == prompt
        assert row["prompt"].endswith("<|im_start|>assistant\n")
        assert row["text"] == prompt + row["completion"] + "<|im_end|>"
        assert row["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False).input_ids)
        completion = tokenizer(row["completion"] + "<|im_end|>", add_special_tokens=False)
        assert row["completion_tokens"] == len(completion.input_ids)
    stats = dataset.stats
    assert sum(stats[s]["count"] for s in ("train", "eval")) == 5
    train = stats["train"]
    assert train["total_tokens"]["max"] == max(
        r["prompt_tokens"] + r["completion_tokens"] for r in dataset.rows if r["split"] == "train"
    )
    assert (
        train["prompt_tokens"]["min"]
        <= train["prompt_tokens"]["p50"]
        <= train["prompt_tokens"]["max"]
    )


def sample_examples(conn: duckdb.DuckDBPyConnection, **kwargs: int) -> list[RawExample]:
    raw, skipped = collect_examples(conn, SAMPLE_DIR / "runbooks", **kwargs)
    assert skipped == Counter()
    return raw


@pytest.mark.models
def test_runbook_and_ontology_pairs_are_deterministic(
    sample_warehouse: Path, tokenizer: Any
) -> None:
    with duckdb.connect(str(sample_warehouse)) as conn:
        assert build_objects(conn, load_ontology(ONTOLOGY_DIR)).published
        first, second = sample_examples(conn), sample_examples(conn)
        small = sample_examples(conn, max_objects_per_type=2)
    assert first == second
    assert [example_id(r.question, r.completion) for r in first] == [
        example_id(r.question, r.completion) for r in second
    ]
    runbook = [r for r in first if r.source == "runbook"]
    assert len(runbook) >= 4 * 16  # symptoms, diagnosis, remediation, escalation each
    questions = {r.question for r in runbook}
    assert "High CPU utilisation on a YARN cluster: how do I diagnose it?" in questions
    assert "HDFS 복제 부족 및 누락 블록 대응: 어떻게 조치하나요?" in questions
    assert all(len(r.completion) <= 1000 + 60 for r in runbook)  # capped, with the cut note
    ontology = [r for r in first if r.source == "ontology"]
    per_type = Counter(r.question.split()[2] for r in ontology)
    assert per_type == Counter(cluster=3, host=20, spark=20)
    assert Counter(r.question.split()[2] for r in small if r.source == "ontology") == Counter(
        cluster=2, host=2, spark=2
    )
    assert {r.question for r in small if r.source == "ontology"} <= {r.question for r in ontology}
    dataset = build_dataset(first, tokenizer, base_model=BASE)
    assert dataset.skipped == Counter()
    assert personal_data_left(dataset) == overlapping_splits(dataset) == []


def test_an_unreadable_runbook_is_counted_and_the_rest_kept(
    warehouse: Warehouse, runbooks: Path
) -> None:
    (runbooks / "rb-broken.md").write_bytes(b"\x00\x01binary")
    (runbooks / "rb-open.md").write_text("---\ntitle: x\n# no closing line\n", encoding="utf-8")
    raw, skipped = collect_examples(warehouse.conn, runbooks)
    assert skipped == Counter(runbook_binary=1, runbook_invalid=1)
    assert len(raw) == 3


@pytest.mark.models
def test_parquet_and_jsonl_hold_the_same_rows(tokenizer: Any, tmp_path: Path) -> None:
    raw = [
        *examples(40),
        RawExample("runbook", "큐 포화: 어떻게 진단하나요?", "`yarn top` 으로 확인한다."),
    ]
    dataset = build_dataset(raw, tokenizer, base_model=BASE)
    root = tmp_path / "datasets"
    path = write_dataset(dataset, root)
    assert path == root / dataset.version
    assert sorted(p.name for p in root.iterdir()) == [dataset.version]  # no staging left
    for split in ("train", "eval"):
        jsonl = [
            json.loads(line) for line in (path / f"{split}.jsonl").read_text("utf-8").splitlines()
        ]
        parquet = pl.read_parquet(path / f"{split}.parquet").to_dicts()
        assert parquet == jsonl == load_split(path, split) == dataset.split(split)
        assert jsonl
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["version"] == dataset.version
    assert manifest["base_model"] == BASE
    assert manifest["counts"] == dataset.counts()
    assert manifest["token_stats"] == dataset.stats


@pytest.mark.models
def test_an_existing_version_is_reused_untouched(tokenizer: Any, tmp_path: Path) -> None:
    dataset = build_dataset(examples(20), tokenizer, base_model=BASE)
    path = write_dataset(dataset, tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.iterdir()}
    again = build_dataset(examples(20), tokenizer, base_model=BASE)
    assert write_dataset(again, tmp_path) == path
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.iterdir()} == before


@pytest.mark.models
def test_a_half_made_version_folder_is_refused_not_replaced(tokenizer: Any, tmp_path: Path) -> None:
    dataset = build_dataset(examples(5), tokenizer, base_model=BASE)
    (tmp_path / dataset.version).mkdir()
    (tmp_path / dataset.version / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"no manifest\.json"):
        write_dataset(dataset, tmp_path)
    assert (tmp_path / dataset.version / "notes.txt").read_text() == "keep me"


def test_load_split_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="not a dataset version"):
        load_split(tmp_path, "train")


@pytest.mark.models
def test_counts_cover_every_split_and_source(tokenizer: Any) -> None:
    dataset: SFTDataset = build_dataset(examples(4), tokenizer, base_model=BASE)
    counts = dataset.counts()
    assert set(counts["split"]) == {"train", "eval"}
    assert counts["source"] == {
        "correction": 0,
        "feedback": 4,
        "runbook": 0,
        "ontology": 0,
        "teacher": 0,
    }
