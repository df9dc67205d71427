"""The SFT dataset: what people approved or corrected, plus pairs drawn from the runbooks and
the ontology, scrubbed, deduplicated, split and formatted for the base model.

An example's id is a hash of its normalised question and answer, so the same example found
twice counts once, and its split is read off that id, so adding examples never moves one from
train to eval (an evaluation stays comparable across versions). A question answered twice
keeps one answer (a correction first, then approved feedback, then the newest), because the
model cannot learn two answers to one question and eval must not ask what train answered.
The version is a hash of the ids and of everything that shapes a row, so rebuilding unchanged
data reuses the folder on disk untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import polars as pl

from dagster_platform.agents.headline import HEADLINE_SYSTEM_PROMPT, headline_prompt
from dagster_platform.agents.interactions import TABLE as INTERACTIONS_TABLE
from dagster_platform.ingestion.documents import DocumentRejected
from dagster_platform.ingestion.runbooks import read_runbook, runbook_paths
from dagster_platform.kafka.events import FEEDBACK_EVENTS
from dagster_platform.knowledge.documents import chunk_markdown
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.redaction import find, scrub
from dagster_platform.lib.warehouse import quote, table_exists
from dagster_platform.ontology.build import OBJECTS_TABLE

log = get_logger(__name__)

Source = Literal["feedback", "correction", "runbook", "ontology", "teacher"]
SOURCES: tuple[Source, ...] = ("correction", "feedback", "runbook", "ontology", "teacher")
SPLITS = ("train", "eval")
SFT_SYSTEM_PROMPT = (
    "You are an operations assistant for data-platform clusters (YARN, Spark, HDFS, Kafka). "
    "Answer the operator accurately and concisely, in the language of the question."
)
FEEDBACK_TABLE = FEEDBACK_EVENTS.tables[0].table
ANSWERED = ("answered", "degraded")
MAX_ANSWER_CHARS = 1000
MAX_OBJECTS_PER_TYPE = 20
MANIFEST = "manifest.json"

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Questions per runbook section, in the runbook's language; `None` is the text before the
# first section, `"*"` any other section.
_RUNBOOK_QUESTIONS: dict[str, dict[str | None, str]] = {
    "en": {
        None: "{title}: what is this runbook for?",
        "symptoms": "{title}: what are the symptoms?",
        "diagnosis": "{title}: how do I diagnose it?",
        "remediation": "{title}: how do I fix it?",
        "escalation": "{title}: when and how do I escalate?",
        "*": '{title}: what does the runbook say under "{section}"?',
    },
    "ko": {
        None: "{title}: 이 런북은 무엇을 위한 것인가요?",
        "증상": "{title}: 어떤 증상이 나타나나요?",
        "진단": "{title}: 어떻게 진단하나요?",
        "조치": "{title}: 어떻게 조치하나요?",
        "에스컬레이션": "{title}: 언제, 어떻게 에스컬레이션하나요?",
        "*": '{title}: 런북의 "{section}" 항목은 무엇인가요?',
    },
}
_CUT_NOTE = {"en": "(continued in runbook {doc})", "ko": "(나머지는 런북 {doc} 참고)"}


@dataclass(frozen=True)
class RawExample:
    """A question and the answer to learn, before scrubbing; `rated_at` orders answers to the
    same question from people (the newest wins among equals)."""

    source: Source
    question: str
    completion: str
    interaction_id: str | None = None
    rated_at: datetime | None = None
    system: str = SFT_SYSTEM_PROMPT  # the task: answering, or writing the headline


def headline_example(
    source: Source,
    question: str,
    evidence: list[str],
    headline: str,
    interaction_id: str | None = None,
    rated_at: datetime | None = None,
) -> RawExample:
    """The headline task as the served model sees it: the question and the tools' facts in,
    the accepted headline (one paragraph) out."""
    prompt = headline_prompt(question, evidence)
    first = headline.strip().split("\n\n")[0].strip()
    return RawExample(
        source, prompt[1].content, first, interaction_id, rated_at, HEADLINE_SYSTEM_PROMPT
    )


@dataclass
class SFTDataset:
    """Rows in the shared contract's columns (sorted by example id), token statistics per
    split, and what scrubbing replaced and building left out, by kind and by reason."""

    version: str
    base_model: str
    eval_percent: int
    rows: list[dict[str, Any]]
    stats: dict[str, dict[str, Any]]
    scrubbed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def split(self, name: str) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["split"] == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Examples per split and per source, every key present (zeros included)."""
        return {
            "split": {s: sum(r["split"] == s for r in self.rows) for s in SPLITS},
            "source": {s: sum(r["source"] == s for r in self.rows) for s in SOURCES},
        }

    def manifest(self, created_at: datetime) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": created_at.isoformat(),
            "base_model": self.base_model,
            "eval_percent": self.eval_percent,
            "system_prompt": SFT_SYSTEM_PROMPT,
            "counts": self.counts(),
            "scrubbed": dict(sorted(self.scrubbed.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "token_stats": self.stats,
        }


def normalise(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: what makes two texts the same example."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def example_id(question: str, completion: str) -> str:
    key = f"{normalise(question)}\x1f{normalise(completion)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def split_of(example_id: str, eval_percent: int) -> str:
    return "eval" if int(example_id, 16) % 100 < eval_percent else "train"


# --- collecting ---------------------------------------------------------------------------


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        [table],
    ).fetchall()
    return {name for (name,) in rows}


def feedback_examples(conn: duckdb.DuckDBPyConnection) -> tuple[list[RawExample], Counter[str]]:
    """Approved answers and corrections: the latest feedback per interaction decides; a
    correction wins whatever the rating, a down vote or neutral rating alone teaches nothing."""
    skipped: Counter[str] = Counter()
    if not table_exists(conn, FEEDBACK_TABLE):
        return [], skipped
    correction = "correction" if "correction" in _columns(conn, FEEDBACK_TABLE) else "NULL"
    (total,) = conn.execute(f"SELECT count(*) FROM {quote(FEEDBACK_TABLE)}").fetchone()
    latest = (
        f"SELECT interaction_id, rating, {correction} AS correction, ts "
        f"FROM {quote(FEEDBACK_TABLE)} QUALIFY row_number() OVER "
        "(PARTITION BY interaction_id ORDER BY ts DESC, feedback_id DESC) = 1"
    )
    if table_exists(conn, INTERACTIONS_TABLE):
        have = _columns(conn, INTERACTIONS_TABLE)
        headline = "i.headline" if "headline" in have else "NULL"
        evidence = "i.evidence" if "evidence" in have else "NULL"
        query = (
            f"SELECT f.*, i.interaction_id IS NOT NULL, i.status, i.question, i.answer, "
            f"{headline}, {evidence} "
            f"FROM ({latest}) f LEFT JOIN {quote(INTERACTIONS_TABLE)} i USING (interaction_id)"
        )
    else:
        query = f"SELECT *, false, NULL, NULL, NULL, NULL, NULL FROM ({latest})"
    rows = conn.execute(f"{query} ORDER BY ts, interaction_id").fetchall()
    skipped["superseded"] = total - len(rows)
    examples: list[RawExample] = []
    for row in rows:
        examples += _headline_examples(row)
    for interaction_id, rating, fix, ts, known, status, question, answer, *_ in rows:
        if not known:
            skipped["unknown_interaction"] += 1
        elif status not in ANSWERED or not (answer or "").strip():
            skipped["not_answered"] += 1
        elif not question.strip():
            skipped["blank_question"] += 1
        elif fix and fix.strip():
            examples.append(RawExample("correction", question, fix.strip(), interaction_id, ts))
        elif rating == 1:
            examples.append(RawExample("feedback", question, answer.strip(), interaction_id, ts))
        else:
            skipped["down_vote" if rating == -1 else "neutral"] += 1
    return examples, +skipped


def _headline_examples(row: tuple[Any, ...]) -> list[RawExample]:
    """A rated answer whose facts were recorded also teaches the headline: a correction's first
    paragraph, or the headline an up vote approved."""
    interaction_id, rating, fix, ts, known, status, question, _, headline, evidence = row
    facts = json.loads(evidence) if isinstance(evidence, str) else list(evidence or [])
    if not known or status not in ANSWERED or not facts or not (question or "").strip():
        return []
    if fix and fix.strip():
        return [headline_example("correction", question, facts, fix, interaction_id, ts)]
    if rating == 1 and (headline or "").strip():
        return [headline_example("feedback", question, facts, headline, interaction_id, ts)]
    return []


def _language(meta: Mapping[str, Any], title: str) -> str:
    language = str(meta.get("language", "")).lower()
    if language in _RUNBOOK_QUESTIONS:
        return language
    return "ko" if _HANGUL.search(title) else "en"


def runbook_examples(
    runbooks_dir: Path, max_answer_chars: int = MAX_ANSWER_CHARS
) -> tuple[list[RawExample], Counter[str]]:
    """One pair per runbook section: a question built from the title and the section heading,
    answered by the section's text (its first `max_answer_chars`, cut between paragraphs)."""
    examples: list[RawExample] = []
    skipped: Counter[str] = Counter()
    for path in runbook_paths(runbooks_dir):
        try:
            runbook = read_runbook(path)
        except DocumentRejected as exc:
            skipped[f"runbook_{exc.reason}"] += 1
            continue
        chunks = chunk_markdown(
            runbook.doc_id, runbook.body, "runbook", max_answer_chars, title=runbook.title
        )
        if not chunks:
            skipped["runbook_empty"] += 1
            continue
        title = runbook.title
        language = _language(runbook.meta, title)
        templates = _RUNBOOK_QUESTIONS[language]
        for heading, parts in groupby(chunks, key=lambda c: c.heading):
            first, *rest = parts
            section = heading.removeprefix(title).removeprefix(" > ")
            template = templates.get(section.lower() or None, templates["*"])
            answer = first.text[len(heading) :].strip()
            if rest:
                answer += "\n\n" + _CUT_NOTE[language].format(doc=runbook.doc_id)
            question = template.format(title=title, section=section)
            examples.append(RawExample("runbook", question, answer))
    return examples, skipped


def ontology_examples(
    conn: duckdb.DuckDBPyConnection, max_per_type: int = MAX_OBJECTS_PER_TYPE
) -> list[RawExample]:
    """A "What is <type> <key>?" pair per object, answered by its description, for at most
    `max_per_type` objects per type chosen by a hash of their key: a fixed, even sample that
    keeps thousands of jobs from drowning what people taught."""
    if not table_exists(conn, OBJECTS_TABLE):
        return []
    rows = conn.execute(
        f"SELECT object_type, object_key, description FROM {quote(OBJECTS_TABLE)} "
        "WHERE trim(coalesce(description, '')) <> '' QUALIFY row_number() OVER "
        "(PARTITION BY object_type ORDER BY sha256(object_type || ':' || object_key)) <= ? "
        "ORDER BY object_type, object_key",
        [max_per_type],
    ).fetchall()
    return [
        RawExample("ontology", f"What is {kind.replace('_', ' ')} {key}?", description.strip())
        for kind, key, description in rows
    ]


def collect_examples(
    conn: duckdb.DuckDBPyConnection,
    runbooks_dir: Path,
    *,
    max_answer_chars: int = MAX_ANSWER_CHARS,
    max_objects_per_type: int = MAX_OBJECTS_PER_TYPE,
) -> tuple[list[RawExample], Counter[str]]:
    """Every raw example the warehouse and the runbooks yield, and what was skipped, by why."""
    rated, skipped = feedback_examples(conn)
    pairs, rejected = runbook_examples(runbooks_dir, max_answer_chars)
    objects = ontology_examples(conn, max_objects_per_type)
    return [*rated, *pairs, *objects], skipped + rejected


# --- building -----------------------------------------------------------------------------


def _winners(
    examples: Iterable[tuple[str, RawExample]],
) -> tuple[list[tuple[str, RawExample]], Counter[str]]:
    """One example per id and per normalised question: a correction before approved feedback
    before runbook and ontology pairs, then the newest, then the id."""
    oldest = datetime.min.replace(tzinfo=UTC)

    def rank(item: tuple[str, RawExample]) -> tuple[int, datetime, str]:
        eid, raw = item
        return (-SOURCES.index(raw.source), raw.rated_at or oldest, eid)

    dropped: Counter[str] = Counter()
    by_id: dict[str, tuple[str, RawExample]] = {}
    for item in examples:
        if item[0] in by_id:
            dropped["duplicate"] += 1
            item = max(item, by_id[item[0]], key=rank)
        by_id[item[0]] = item
    by_question: dict[str, tuple[str, RawExample]] = {}
    for item in by_id.values():
        key = normalise(item[1].question)
        if key in by_question:
            dropped["same_question"] += 1
            item = max(item, by_question[key], key=rank)
        by_question[key] = item
    return sorted(by_question.values(), key=lambda item: item[0]), dropped


def _summary(values: list[int]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "min": int(array.min()),
        "mean": round(float(array.mean()), 1),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": int(array.max()),
    }


def token_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per split: the count and min/mean/p50/p95/max of prompt, completion and total tokens."""
    stats: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        stats[split] = {"count": len(chosen)}
        if chosen:
            for name, tokens in (
                ("prompt_tokens", [r["prompt_tokens"] for r in chosen]),
                ("completion_tokens", [r["completion_tokens"] for r in chosen]),
                ("total_tokens", [r["prompt_tokens"] + r["completion_tokens"] for r in chosen]),
            ):
                stats[split][name] = _summary(tokens)
    return stats


def _version(ids: Iterable[str], tokenizer: Any, base_model: str, eval_percent: int) -> str:
    digest = hashlib.sha256()
    for part in (
        base_model,
        str(getattr(tokenizer, "chat_template", "") or ""),
        str(tokenizer.eos_token),
        SFT_SYSTEM_PROMPT,
        HEADLINE_SYSTEM_PROMPT,
        str(eval_percent),
        *sorted(ids),
    ):
        digest.update(part.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def build_dataset(
    raw: Iterable[RawExample],
    tokenizer: Any,
    *,
    base_model: str,
    eval_percent: int = 10,
    skipped: Mapping[str, int] | None = None,
) -> SFTDataset:
    """Scrub, deduplicate, split by id and format with the tokenizer's chat template.

    `completion_tokens` counts the completion with the end-of-sequence token, as training
    sees it; `skipped` (what collecting left out) is carried into the manifest.
    """
    if not 0 <= eval_percent <= 100:
        raise ValueError(f"eval_percent must be between 0 and 100, got {eval_percent}")
    scrubbed: Counter[str] = Counter()
    dropped: Counter[str] = Counter(skipped or {})
    cleaned: list[tuple[str, RawExample]] = []
    for example in raw:
        question, found_q = scrub(example.question.strip())
        completion, found_c = scrub(example.completion.strip())
        scrubbed += found_q + found_c
        if not question or not completion:
            dropped["blank"] += 1
            continue
        clean = RawExample(
            example.source,
            question,
            completion,
            example.interaction_id,
            example.rated_at,
            example.system,
        )
        cleaned.append((example_id(question, completion), clean))
    kept, duplicates = _winners(cleaned)
    dropped += duplicates
    eos = tokenizer.eos_token
    rows: list[dict[str, Any]] = []
    for eid, example in kept:
        messages = [
            {"role": "system", "content": example.system},
            {"role": "user", "content": example.question},
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rows.append(
            {
                "example_id": eid,
                "source": example.source,
                "interaction_id": example.interaction_id,
                "messages": json.dumps(messages, ensure_ascii=False),
                "completion": example.completion,
                "prompt": prompt,
                "text": prompt + example.completion + eos,
                "split": split_of(eid, eval_percent),
            }
        )
    if rows:
        prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
        answers = tokenizer([r["completion"] + eos for r in rows], add_special_tokens=False)
        for row, prompt_ids, answer_ids in zip(rows, prompts, answers["input_ids"], strict=True):
            row["prompt_tokens"], row["completion_tokens"] = len(prompt_ids), len(answer_ids)
    dataset = SFTDataset(
        version=_version((r["example_id"] for r in rows), tokenizer, base_model, eval_percent),
        base_model=base_model,
        eval_percent=eval_percent,
        rows=rows,
        stats=token_stats(rows),
        scrubbed=+scrubbed,
        skipped=+dropped,
    )
    log.info(
        "built SFT dataset %s",
        dataset.version,
        extra={"counts": dataset.counts(), "scrubbed": dict(dataset.scrubbed)},
    )
    return dataset


_HEADLINE_QUESTION = re.compile(r"^Question \([A-Za-z]+\): (.*?)\nFacts:", re.DOTALL)


def asked_questions(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every question the rows teach (normalised), the headline task's included: what an
    evaluation on held-out questions must not ask."""
    asked: set[str] = set()
    for row in rows:
        user = next(m["content"] for m in json.loads(row["messages"]) if m["role"] == "user")
        match = _HEADLINE_QUESTION.match(user)
        asked.add(normalise(match.group(1) if match else user))
    return asked


# --- storing ------------------------------------------------------------------------------

_SCHEMA = {
    "example_id": pl.String,
    "source": pl.String,
    "interaction_id": pl.String,
    "messages": pl.String,
    "completion": pl.String,
    "prompt": pl.String,
    "text": pl.String,
    "split": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
}


def write_dataset(dataset: SFTDataset, root: Path) -> Path:
    """`root/<version>/` with both splits as Parquet and JSON lines and the manifest. Written
    aside and renamed into place, so a version folder is whole or absent; one that exists is
    returned untouched."""
    target = root / dataset.version
    if target.exists():
        if not (target / MANIFEST).is_file():
            raise FileExistsError(f"{target} exists but holds no {MANIFEST}; move it away")
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset.version}-", dir=root))
    try:
        for split in SPLITS:
            rows = dataset.split(split)
            pl.DataFrame(rows, schema=_SCHEMA).write_parquet(staging / f"{split}.parquet")
            with (staging / f"{split}.jsonl").open("w", encoding="utf-8") as out:
                out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        manifest = dataset.manifest(datetime.now(UTC))
        (staging / MANIFEST).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        os.rename(staging, target)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        if (target / MANIFEST).is_file():  # another writer put the same version in place
            return target
        raise
    log.info("wrote SFT dataset %s", dataset.version, extra={"rows": len(dataset.rows)})
    return target


def load_split(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    """The rows of one split of a written dataset version, in example id order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(dataset_dir) / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {dataset_dir} is not a dataset version")
    return pl.read_parquet(path).to_dicts()


# --- checks -------------------------------------------------------------------------------


def enough_examples(dataset: SFTDataset, minimum: int, minimum_eval: int = 1) -> tuple[bool, str]:
    """At least `minimum` training and `minimum_eval` evaluation examples."""
    counts = dataset.counts()["split"]
    passed = counts["train"] >= minimum and counts["eval"] >= minimum_eval
    detail = (
        f"{counts['train']} train and {counts['eval']} eval examples "
        f"(at least {minimum} train and {minimum_eval} eval needed)"
    )
    return passed, detail


def personal_data_left(dataset: SFTDataset) -> list[tuple[str, list[str]]]:
    """(example id, kinds found) of every example whose messages or completion still hold
    something the scrubber would remove."""
    left = []
    for row in dataset.rows:
        texts = [m["content"] for m in json.loads(row["messages"])] + [row["completion"]]
        kinds = sorted({kind for text in texts for kind in find(text)})
        if kinds:
            left.append((row["example_id"], kinds))
    return left


def overlapping_splits(dataset: SFTDataset) -> list[str]:
    """Ids of examples in both splits, or of eval examples whose question train also asks."""
    ids = {s: {r["example_id"] for r in dataset.split(s)} for s in SPLITS}
    train_questions = {
        normalise(json.loads(r["messages"])[-1]["content"]) for r in dataset.split("train")
    }
    asked = {
        r["example_id"]
        for r in dataset.split("eval")
        if normalise(json.loads(r["messages"])[-1]["content"]) in train_questions
    }
    return sorted((ids["train"] & ids["eval"]) | asked)
