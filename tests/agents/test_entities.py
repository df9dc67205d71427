"""Entity linking against the keys of the frozen sample warehouse."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import duckdb
import pytest

from dagster_platform.agents.entities import Entities, EntityLinker
from dagster_platform.settings import Settings
from tests.support.state import SAMPLE_DIR

GOLDEN = {
    q["question_id"]: q["question"]
    for q in map(json.loads, (SAMPLE_DIR / "golden_questions.jsonl").read_text().splitlines())
}
APP = "application_1794712500000_{}"


@pytest.fixture(scope="module")
def linker(
    sample_warehouse_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> EntityLinker:
    state = tmp_path_factory.mktemp("linker")
    shutil.copyfile(sample_warehouse_template, state / "warehouse.duckdb")
    return EntityLinker.from_warehouse(Settings(state_dir=state))


def linked(linker: EntityLinker, question: str) -> dict[str, object]:
    """The entities found, without the empty ones."""
    return {k: v for k, v in asdict(linker.link(question)).items() if v not in (None, [])}


# question id → everything the question should link to (and nothing else)
EXPECTED: dict[str, dict[str, object]] = {
    # the seed scenario
    "gq-001": {},
    "gq-002": {"top_n": 3},
    "gq-003": {},
    "gq-004": {"top_n": 2},
    "gq-005": {},
    # curated questions
    "gq-006": {"clusters": ["etl-prod"], "hosts": ["etl-prod-worker-07"], "metric": "disk"},
    "gq-007": {"clusters": ["etl-prod"], "states": ["FAILED"], "since_hours": 24.0},
    "gq-009": {"host_status": "not_healthy"},
    "gq-010": {"clusters": ["etl-prod"], "states": ["ACCEPTED"]},
    "gq-012": {"clusters": ["etl-prod"], "top_n": 1, "metric": "cpu", "roles": ["worker"]},
    "gq-013": {"queues": ["root.etl.backfill"], "states": ["RUNNING"]},
    "gq-016": {"users": ["sypark"], "states": ["RUNNING"]},
    "gq-018": {"clusters": ["staging"], "hosts": ["staging-worker-04"], "metric": "cpu"},
    "gq-021": {
        "clusters": ["etl-prod"],
        "states": ["RUNNING"],
        "threshold_pct": 95.0,
        "metric": "cpu",
        "roles": ["worker"],
    },
    "gq-025": {"clusters": ["etl-prod"], "states": ["KILLED"], "since_hours": 72.0},
    "gq-030": {"clusters": ["etl-prod"], "racks": ["r01"], "host_status": "not_healthy"},
    "gq-031": {
        "clusters": ["analytics-prod"],
        "job_names": ["ctr_model_train"],
        "states": ["ACCEPTED"],
    },
    "gq-036": {"clusters": ["analytics-prod"], "threshold_pct": 80.0, "metric": "disk"},
    "gq-040": {"clusters": ["staging"], "job_names": ["spark35_upgrade_regression"]},
    "gq-042": {
        "clusters": ["etl-prod"],
        "applications": [APP.format("0502")],
        "job_names": ["search_log_backfill"],
    },
    "gq-044": {"clusters": ["staging"], "top_n": 1, "metric": "cpu", "roles": ["worker"]},
    "gq-045": {
        "job_names": ["clickstream_sessionize"],
        "states": ["FAILED"],
        "since_hours": 72.0,
    },
    "gq-046": {"queues": ["root.etl.daily"], "states": ["ACCEPTED"]},
    "gq-048": {"clusters": ["etl-prod"], "top_n": 1, "metric": "memory"},
    "gq-050": {
        "clusters": ["analytics-prod"],
        "queues": ["root.analytics.adhoc"],
        "states": ["RUNNING"],
    },
}


@pytest.mark.parametrize("qid", EXPECTED)
def test_golden_questions_link_as_expected(linker: EntityLinker, qid: str) -> None:
    assert linked(linker, GOLDEN[qid]) == EXPECTED[qid]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        # a host wins over the cluster inside its id, which is reported as its cluster
        ("is etl-prod-worker-07 ok?", {"hosts": ["etl-prod-worker-07"], "clusters": ["etl-prod"]}),
        ("ETL-PROD.", {"clusters": ["etl-prod"]}),
        ("staging이랑 etl-prod 비교", {"clusters": ["staging", "etl-prod"]}),
        ("jobs in root.staging.default", {"queues": ["root.staging.default"]}),
        ("hlee/jkim", {"users": ["hlee", "jkim"]}),
        ("application_1_2 상태", {"applications": ["application_1_2"]}),  # unknown, still an id
        ("kafka_events_ingest_stream", {"job_names": ["kafka_events_ingest_stream"]}),
        ("the kafka brokers", {"roles": ["kafka"]}),
        ("마스터와 엣지 노드", {"roles": ["master", "edge"]}),
        # a queue's last part only next to the word queue
        ("daily jobs", {}),
        ("the backfill queue", {"queues": ["root.etl.backfill"]}),
        ("queue training", {"queues": ["root.ml.training"]}),
        # counts
        ("top three jobs", {"top_n": 3}),
        ("the 5 biggest jobs", {"top_n": 5}),
        ("세 개만 보여줘", {"top_n": 3}),
        ("across all three clusters", {}),
        # thresholds need a comparison
        ("disk at 92%", {"metric": "disk"}),
        ("memory over 85.5 %", {"metric": "memory", "threshold_pct": 85.5}),
        ("CPU 90% 이상", {"metric": "cpu", "threshold_pct": 90.0}),
        ("memory and CPU", {"metric": "memory"}),
        # time windows
        ("in the past 2 days", {"since_hours": 48.0}),
        ("last 30 minutes", {"since_hours": 0.5}),
        ("during the last hour", {"since_hours": 1.0}),
        ("최근 6시간", {"since_hours": 6.0}),
        ("지난 며칠", {"since_hours": 72.0}),
        ("since yesterday", {"since_hours": 48.0}),
        ("11월 20일", {}),
        # states
        ("jobs that succeeded", {"states": ["FINISHED"]}),
        ("pending or running?", {"states": ["ACCEPTED", "RUNNING"]}),
        ("죽인 잡", {"states": ["KILLED"]}),
        ("kill it", {}),
    ],
)
def test_linking_rules(linker: EntityLinker, question: str, expected: dict[str, object]) -> None:
    assert linked(linker, question) == expected


def test_every_field_defaults_to_nothing() -> None:
    assert EntityLinker().link("the cluster's CPU") == Entities(metric="cpu")


def test_names_shaped_like_keys_that_nothing_holds_are_kept_as_unknown() -> None:
    linker = EntityLinker(clusters=["etl-prod"], hosts={"etl-prod-worker-01": "etl-prod"})
    found = linker.link("Is etl-dev busy? etl-prod-worker-99 and user_feature_backfll too")
    assert found.clusters == [] and found.hosts == []
    assert found.unknown_clusters == ["etl-dev"]
    assert found.unknown_hosts == ["etl-prod-worker-99"]
    assert found.unknown_jobs == ["user_feature_backfll"]
    assert linker.link("etl-prod-worker-01 CPU").unknown_hosts == []


def test_from_warehouse_reads_streamed_jobs_too(sample_warehouse: Path) -> None:
    with duckdb.connect(str(sample_warehouse)) as conn:
        conn.execute(
            'INSERT INTO spark_job_state (application_id, cluster_id, name, queue, "user", '
            "state) VALUES ('application_9_1', 'lab', 'fresh_job', 'root.lab.adhoc', 'newbie', "
            "'RUNNING')"
        )
    linker = EntityLinker.from_warehouse(Settings(state_dir=sample_warehouse.parent))
    assert linked(linker, "newbie's fresh_job on lab, lab.adhoc queue?") == {
        "clusters": ["lab"],
        "users": ["newbie"],
        "job_names": ["fresh_job"],
    }
    assert linked(linker, "lab adhoc 큐") == {
        "clusters": ["lab"],
        "queues": ["root.lab.adhoc"],  # the adhoc queue of the named cluster
    }
    assert linked(linker, "adhoc 큐") == {"queues": ["root.analytics.adhoc", "root.lab.adhoc"]}


def test_from_warehouse_needs_a_warehouse(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no warehouse at .*run the ingestion first"):
        EntityLinker.from_warehouse(Settings(state_dir=tmp_path))
