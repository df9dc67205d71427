"""The headline an on-call engineer reads first: composed from the tools' facts on a frozen
sample (no model), in the question's language, every number agreeing with the warehouse; and
the bad inputs the issue names (unknown names, a third language, a question matching nothing,
a model whose headline must be refused)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from dagster_platform.agents.assistant import Answer, Assistant
from dagster_platform.agents.entities import Entities
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.headline import compose_headline, language_of
from dagster_platform.agents.planner import RulePlanner, SessionAction, Turn
from dagster_platform.agents.tools import TOOLS, ToolContext
from dagster_platform.llm.client import ResiliencePolicy
from dagster_platform.llm.service import LLMConfig
from dagster_platform.settings import Settings
from tests.support.fake_vllm import FakeVLLMServer
from tests.support.state import SAMPLE_DIR, live_settings


@pytest.fixture(scope="module")
def frozen_template(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("frozen-headline")
    return build_frozen_state(
        live_settings(root / "live", SAMPLE_DIR), root / "frozen", embed=False
    )


@pytest.fixture
def frozen(frozen_template: Settings, tmp_path: Path) -> Settings:
    target = tmp_path / "state"
    shutil.copytree(frozen_template.state_dir, target, symlinks=True)
    return frozen_template.model_copy(update={"state_dir": target})


@pytest.fixture
def assistant(frozen: Settings):
    assistant = Assistant.open(frozen, use_llm=False)
    yield assistant
    assistant.close()


def _headline(assistant: Assistant, question: str) -> str:
    answer = assistant.ask(question)
    assert answer.text.startswith(answer.interaction.headline)
    assert answer.interaction.headline_source == "composed"
    return answer.interaction.headline


@pytest.mark.models
@pytest.mark.parametrize(
    ("question", "facts"),
    [
        ("현재 클러스터 가동율 알려줘?", ["etl-prod", "90.6%", "가장 바쁜"]),
        ("etl-prod-worker-07 디스크 지금 몇 % 차 있어?", ["etl-prod-worker-07", "디스크 91.3%"]),
        ("etl-prod에서 CPU 제일 높은 워커가 어디야?", ["etl-prod-worker-02", "98.6%"]),
        ("How much total vcore and memory capacity does analytics-prod have?", ["416", "2048"]),
        (
            "Which queue is using the most memory on etl-prod right now?",
            ["root.etl.backfill", "1512"],
        ),
        (
            "Who submitted the Spark job using the most CPU on etl-prod?",
            ["sypark submitted application_1794712500000_0488"],
        ),
        (
            "Are any hosts in a non-healthy state right now, across all three clusters?",
            ["Yes", "4 hosts", "staging-worker-04", "maintenance"],
        ),
        ("analytics-prod에 디스크 사용률 80% 넘는 호스트 있어?", ["네", "analytics-prod-kafka-02"]),
        (
            "We cleaned up appcache on etl-prod-worker-07. Can you check whether its disk usage is "
            "back under 80%?",
            ["No", "91.3%", "still above 80%"],
        ),
        ("What's the average memory utilisation across the etl-prod worker nodes?", ["77.4%"]),
    ],
)
def test_the_headline_answers_first_in_the_questions_language(
    assistant: Assistant, question: str, facts: list[str]
) -> None:
    headline = _headline(assistant, question)
    for fact in facts:
        assert fact in headline
    assert language_of(headline) == language_of(question)
    assert len(headline) < 400


@pytest.mark.models
def test_jobs_mean_running_jobs_and_totals_agree_with_the_warehouse(
    assistant: Assistant, frozen: Settings
) -> None:
    memory = _headline(assistant, "Which Spark jobs use the most memory on etl-prod?")
    assert "RUNNING Spark jobs on etl-prod" in memory
    assert memory.count("application_") >= 3  # "jobs" lists several, not the first
    held = _headline(
        assistant,
        "How many vcores are the RUNNING etl-prod applications holding, compared with the "
        "cluster total?",
    )
    with duckdb.connect(str(frozen.warehouse_path), read_only=True) as conn:
        jobs, vcores, memory_gb = conn.execute(
            "SELECT count(*), sum(vcores), sum(memory_gb) FROM spark_jobs "
            "WHERE cluster_id = 'etl-prod' AND state = 'RUNNING'"
        ).fetchone()
        (capacity,) = conn.execute(
            "SELECT total_vcores FROM clusters WHERE cluster_id = 'etl-prod'"
        ).fetchone()
    assert f"The {jobs} RUNNING Spark jobs on etl-prod hold {vcores} vcores" in held
    assert f"{memory_gb:.0f} GB" in held and f"cluster's {capacity} vcores" in held
    assert "as of 2026-11-20 08:52 UTC" in held  # the data's own time


@pytest.mark.models
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How busy is etl-dev?", ["There is no cluster 'etl-dev'", "etl-prod"]),
        (
            "etl-prod-worker-99 디스크 몇 %야?",
            ["'etl-prod-worker-99'라는 호스트는 없습니다", "etl-prod-worker-09"],
        ),
        (
            "Is user_feature_backfll still running?",
            ["There is no job name", "user_feature_backfill"],
        ),
    ],
)
def test_a_name_that_does_not_exist_is_said_with_the_nearest_names(
    assistant: Assistant, question: str, expected: list[str]
) -> None:
    headline = _headline(assistant, question)
    for text in expected:
        assert text in headline


@pytest.mark.models
def test_a_third_language_and_a_question_matching_nothing_still_get_an_answer(
    assistant: Assistant,
) -> None:
    japanese = _headline(assistant, "現在のクラスタの使用率は?")
    assert japanese.startswith("(I answer in Korean or English; this answer is in English.)")
    nothing = _headline(assistant, "What is the weather like?")
    assert nothing.startswith("No runbook or past incident matches the question")
    who = assistant.ask("Who submitted the Spark job using the most CPU on etl-prod?")
    assert who.text.strip() and who.interaction.status == "answered"


@pytest.mark.models
def test_did_it_drop_compares_the_sessions_cluster_before_the_action_and_now(
    frozen: Settings,
) -> None:
    """Landed minutes of etl-prod before the session's two approved kills, the minute they ran
    in (its samples already follow the first kill, so it is not "before") and later: the
    planner asks for the figures at the first kill's time and the headline says it fell, from
    what to what, and which actions ran in between."""
    kill_at = datetime(2026, 11, 20, 9, 5, 4, tzinfo=UTC)
    with duckdb.connect(str(frozen.warehouse_path)) as conn:
        workers = [
            h
            for (h,) in conn.execute(
                "SELECT host_id FROM hosts WHERE cluster_id = 'etl-prod' AND role = 'worker'"
            ).fetchall()
        ]
        minute = kill_at.replace(second=0)
        for bucket, cpu in (
            (minute - timedelta(minutes=1), 82.0),
            (minute, 61.0),
            (minute + timedelta(minutes=10), 33.0),
        ):
            conn.execute(
                "INSERT INTO cluster_utilization_1m (cluster_id, bucket, hosts, samples, cpu_avg, "
                "cpu_max, memory_avg, memory_max, disk_max) "
                "VALUES ('etl-prod', ?, ?, 6, ?, ?, 60, 70, 50)",
                [bucket, len(workers), cpu, cpu + 5],
            )
            for host in workers:
                conn.execute(
                    "INSERT INTO host_utilization_1m (cluster_id, host_id, bucket, samples, "
                    "cpu_avg, cpu_max, memory_avg, memory_max, disk_max) "
                    "VALUES ('etl-prod', ?, ?, 6, ?, ?, 60, 70, 50)",
                    [host, bucket, cpu, cpu],
                )
    later = SessionAction(
        "act-ba9876543210",
        "application_1794712500000_0492",
        "executed",
        kill_at + timedelta(seconds=20),
        "etl-prod",
    )
    first = SessionAction(
        "act-0123456789ab", "application_1794712500000_0488", "executed", kill_at, "etl-prod"
    )
    refused = SessionAction("act-000000000000", "application_1", "proposed", kill_at, "staging")
    question = "클러스터 사용율이 떨어졌는지 확인해줘?"
    turn = Turn(
        "infra", question, Entities(), history=[["staging"]], actions=[later, first, refused]
    )
    assert turn.decided_actions() == [first, later]
    (call,) = RulePlanner().plan(turn)
    assert call.tool == "cluster_utilisation"
    assert call.arguments == {"cluster_id": "etl-prod", "compare_with": kill_at.isoformat()}
    result = TOOLS[call.tool].call(ToolContext(frozen), call.arguments)
    assert result.ok, result.error
    headline = compose_headline(question, turn.entities, [result], turn.decided_actions())
    assert headline.startswith("네, 떨어졌습니다: etl-prod 워커 CPU 82.0%(")
    assert "→ 33.0%(" in headline and "61.0%" not in headline
    assert "act-0123456789ab(application_1794712500000_0488 종료)" in headline
    assert "act-ba9876543210" in headline and "act-000000000000" not in headline


def _ask_a_model_that_says(frozen: Settings, reply: str) -> Answer:
    """The seed's first question, served by a FAKE vLLM whose every chat answer is `reply`:
    a model misbehaving on demand, which the real server cannot be made to do."""
    with FakeVLLMServer(base_model="SmolLM2-135M-Instruct") as server:
        server.reply = reply
        assistant = Assistant.open(frozen, llm_config=_fake_llm(frozen, server))
        try:
            return assistant.ask("현재 클러스터 가동율 알려줘?")
        finally:
            assistant.close()


def _fake_llm(frozen: Settings, server: FakeVLLMServer) -> LLMConfig:
    return LLMConfig(
        backend="vllm-server",
        base_model="SmolLM2-135M-Instruct",
        registered_model="ops-assistant",
        tracking_uri=f"sqlite:///{frozen.state_dir / 'mlflow.db'}",
        adapters_dir=frozen.state_dir / "adapters",
        vllm_base_url=server.url,
        policy=ResiliencePolicy(timeout_s=5, retries=0),
        check_interval_s=3600.0,
    )


@pytest.mark.models
@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        ("", "empty"),
        ("현재 클러스터 가동율 알려줘?", "echoes the question"),
        ("The busiest cluster is etl-prod at 90.6% CPU.", "not in Korean"),
        (
            "가장 바쁜 클러스터는 etl-prod이며 워커 CPU는 97.2%입니다.",
            "numbers not in the evidence: 97.2",
        ),
        ("가장 바쁜 클러스터는 etl-dev입니다, 워커 CPU 90.6%.", "ids not in the evidence: etl-dev"),
        ("추천 추천 추천 추천 추천 추천 추천 추천 추천 추천", "repeats"),
    ],
)
def test_a_model_headline_that_fails_the_gate_is_refused_and_recorded(
    frozen: Settings, reply: str, refused: str
) -> None:
    answer = _ask_a_model_that_says(frozen, reply)
    record = answer.interaction
    assert record.headline_source == "composed"
    assert record.model_headline == reply
    assert refused in (record.headline_refused or "")
    assert answer.text.startswith("가장 바쁜 클러스터는 etl-prod입니다")
    with duckdb.connect(str(frozen.warehouse_path), read_only=True) as conn:
        stored = conn.execute(
            "SELECT headline_source, headline_refused, model_headline FROM interactions "
            "WHERE interaction_id = ?",
            [record.interaction_id],
        ).fetchone()
    assert stored == ("composed", record.headline_refused, reply)


@pytest.mark.models
def test_a_model_headline_that_passes_the_gate_is_shown_first(frozen: Settings) -> None:
    good = "가장 바쁜 클러스터는 etl-prod이고 워커 CPU는 90.6%, 메모리는 77.4%입니다."
    answer = _ask_a_model_that_says(frozen, good)
    assert answer.interaction.headline_source == "model"
    assert answer.interaction.headline_refused is None
    assert answer.text.startswith(good)
