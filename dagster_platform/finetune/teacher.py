"""Teacher pairs for the headline task: questions about the sample's own clusters, hosts and
users, each answered by the composer from what the tools return.

The composer is right by construction, so its headlines are what the model should learn to
write from the same facts. Questions are templates over the inventory's keys, Korean and
English, asked the way operators ask; kills (they write proposals) and runbook questions (they
need the knowledge base) are left to the people's corrections. A question of the golden set is
never a teacher question: those are held out to judge the adapters.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from dagster_platform.agents.entities import EntityLinker
from dagster_platform.agents.headline import compose_headline, evidence_lines
from dagster_platform.agents.planner import RulePlanner, Turn
from dagster_platform.agents.tools import TOOLS, ToolContext, ToolResult
from dagster_platform.finetune.dataset import RawExample, headline_example, normalise
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import open_warehouse, table_exists
from dagster_platform.settings import Settings

log = get_logger(__name__)

MAX_HOSTS = 8  # hosts asked about, a fixed sample by hash: enough variety, few minutes' work
MAX_USERS = 4

# (route, template); {cluster}, {host}, {user} or {typo} (a cluster name that does not exist)
TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "cluster": (
        ("infra", "현재 {cluster} 가동율 알려줘?"),
        ("infra", "How busy is {cluster} right now?"),
        ("infra", "{cluster} 워커 평균 메모리 사용률은?"),
        ("infra", "What is the total capacity of {cluster}?"),
        ("infra", "{cluster}에서 CPU 제일 높은 워커가 어디야?"),
        ("infra", "Which {cluster} worker has the fullest disk?"),
        ("infra", "{cluster}에 상태 안 좋은 호스트 있어?"),
        ("infra", "Are there unhealthy hosts on {cluster}?"),
        ("data", "{cluster}에서 리소스를 많이 쓰는 spark 잡 3개 알려줘"),
        ("data", "Which Spark jobs use the most memory on {cluster}?"),
        ("data", "{cluster}에서 ACCEPTED로 대기 중인 잡 있어?"),
        ("data", "How many vcores do the RUNNING jobs on {cluster} hold?"),
        ("data", "Which queue uses the most memory on {cluster}?"),
        ("data", "Who submitted the job using the most CPU on {cluster}?"),
        ("infra", "How busy is {typo}?"),
    ),
    "host": (
        ("infra", "{host} 디스크 몇 % 차 있어?"),
        ("infra", "What are the CPU and memory of {host}?"),
        ("infra", "{host} 상태 어때?"),
    ),
    "user": (
        ("data", "{user}이 돌리고 있는 잡 있어?"),
        ("data", "What is {user} running right now?"),
    ),
}


@dataclass(frozen=True)
class TeacherPair:
    question: str
    evidence: list[str]
    headline: str


def _sample(keys: Iterable[str], most: int) -> list[str]:
    """A fixed, even sample: the keys with the smallest hashes."""
    return sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())[:most]


def teacher_questions(settings: Settings) -> list[tuple[str, str]]:
    """(route, question) for every template over the inventory's keys."""
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        if not table_exists(conn, "hosts"):
            return []
        clusters = sorted(c for (c,) in conn.execute("SELECT cluster_id FROM clusters").fetchall())
        hosts = _sample(
            (h for (h,) in conn.execute("SELECT host_id FROM hosts").fetchall()), MAX_HOSTS
        )
        users = (
            _sample(
                (
                    u
                    for (u,) in conn.execute(
                        "SELECT DISTINCT \"user\" FROM spark_jobs WHERE state = 'RUNNING'"
                    ).fetchall()
                ),
                MAX_USERS,
            )
            if table_exists(conn, "spark_jobs")
            else []
        )
    questions: list[tuple[str, str]] = []
    for cluster in clusters:
        typo = cluster.replace("-prod", "-dev") if "-prod" in cluster else f"{cluster}-test"
        questions += [(r, t.format(cluster=cluster, typo=typo)) for r, t in TEMPLATES["cluster"]]
    for host in hosts:
        questions += [(r, t.format(host=host)) for r, t in TEMPLATES["host"]]
    for user in users:
        questions += [(r, t.format(user=user)) for r, t in TEMPLATES["user"]]
    return questions


def teacher_pairs(
    settings: Settings, held_out: Iterable[str] = ()
) -> tuple[list[TeacherPair], Counter[str]]:
    """The composer's headline for each teacher question, from the tools' results on the
    warehouse as it is; questions in `held_out` (normalised) and failed lookups are skipped."""
    skipped: Counter[str] = Counter()
    if not settings.warehouse_path.is_file():
        return [], skipped
    excluded = {normalise(q) for q in held_out}
    linker = EntityLinker.from_warehouse(settings)
    tools = ToolContext(settings, actor="teacher")
    planner = RulePlanner()
    pairs: list[TeacherPair] = []
    for route, question in teacher_questions(settings):
        if normalise(question) in excluded:
            skipped["teacher_held_out"] += 1
            continue
        turn = Turn(route, question, linker.link(question), known_clusters=linker.clusters)
        results: list[ToolResult] = []
        for call in planner.plan(turn):
            results.append(TOOLS[call.tool].call(tools, call.arguments))
        failed = [r for r in results if not r.ok and "unknown" not in r.details]
        if not results or failed:
            skipped["teacher_lookup_failed"] += 1
            continue
        headline = compose_headline(question, turn.entities, results)
        pairs.append(TeacherPair(question, evidence_lines(results), headline))
    log.info("teacher pairs", extra={"pairs": len(pairs), "skipped": dict(skipped)})
    return pairs, skipped


def teacher_examples(
    settings: Settings, held_out: Iterable[str] = ()
) -> tuple[list[RawExample], Counter[str]]:
    """The teacher pairs as SFT examples of the headline task."""
    pairs, skipped = teacher_pairs(settings, held_out)
    examples = [headline_example("teacher", p.question, p.evidence, p.headline) for p in pairs]
    return examples, skipped
