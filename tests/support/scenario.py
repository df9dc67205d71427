"""The seed scenario (seed 004): its questions, asked in this order in one session, and the
approved kill its fourth step leads to."""

from __future__ import annotations

from datetime import UTC, datetime

from dagster_platform.kafka.events import ActionCommandV1

SEED = [
    "현재 클러스터 가동율 알려줘?",
    "리소스를 많이 사용하는 spark 잡 3개 추출해줘?",
    "클러스터 가동율이 높을때 어떻게 해야되?",
    "이 중에서 상위 2개 spark 잡 Kill 해줘?",
    "클러스터 사용율이 떨어졌는지 확인해줘?",
]


def kill_command(application_id: str, cluster_id: str = "etl-prod") -> ActionCommandV1:
    """An approved kill as the ops-actions topic carries it to the simulator."""
    return ActionCommandV1(
        event_id=f"cmd-{application_id}",
        ts=datetime(2026, 11, 20, 9, 5, tzinfo=UTC),
        action_id=f"act-{application_id}",
        action="kill_spark_job",
        cluster_id=cluster_id,
        target_id=application_id,
        requested_by="infra-agent",
        approved_by="oncall",
    )
