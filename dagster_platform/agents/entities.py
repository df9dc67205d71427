"""Entity linking: what a question names, so that a planner can fill tool arguments without a
model.

Known keys (clusters, hosts, applications, users, queues, job names, racks) come from the
warehouse and are matched as whole tokens, case-insensitively. A token is a run of ASCII
letters, digits and `_ . -` that starts and ends with a letter or digit, so Korean particles
fall away ("etl-prod에", "sypark 계정으로"), a sentence's full stop does too ("etl-prod."), and
a host id stays one token: it wins over the cluster id inside it, which is reported as the
host's cluster. States, counts, thresholds, metrics, time windows and roles come from words,
Korean or English; Korean words match as substrings, since particles follow them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dagster_platform.lib.warehouse import open_warehouse, table_exists
from dagster_platform.settings import Settings

_TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?", re.ASCII)
# An application id is unambiguous, so one the warehouse does not know yet is linked too: the
# tool it reaches says that it is unknown, which is the answer.
_APPLICATION = re.compile(r"application_\d+_\d+", re.ASCII)

# Regexes over the lower-cased question, ASCII word boundaries (re.ASCII: a Korean particle
# after an English word still ends it, "accepted에서"); Korean ones are plain substrings.
_STATES: dict[str, tuple[str, ...]] = {
    "RUNNING": (
        r"\brunning\b",
        r"\bin progress\b",
        "돌고 있",
        "돌고있",
        "돌리고 있",
        "돌아가고 있",
        "돌아가는",
        "실행 중",
        "실행중",
    ),
    "ACCEPTED": (
        r"\baccepted\b",
        r"\bpending\b",
        r"\bwaiting\b",
        r"\bqueued\b",
        r"\b(?:hasn'?t|has not|isn'?t|not yet|not)(?:\s+\S+){0,3}?\s+started\b",
        "대기",
    ),
    "FAILED": (r"\bfail(?:s|ed|ing|ures?)?\b", "실패"),
    "KILLED": (r"\bkilled\b", "죽인", "죽은", "킬된", "kill된", "강제 종료"),
    "FINISHED": (r"\bfinished\b", r"\bsucceeded\b", r"\bcompleted\b", "완료", "성공"),
    # "who submitted it" asks for a person, not for jobs in the SUBMITTED state
    "SUBMITTED": (r"(?<!who )\bsubmitted\b(?! (?:it|them|by)\b)", r"(?<!누가 )제출(?!한 사람|자)"),
}
_HOST_STATUSES: dict[str, tuple[str, ...]] = {
    "not_healthy": (
        r"\bnon-?healthy\b",
        r"\bunhealthy\b",
        r"\bnot healthy\b",
        "상태 안 좋",
        "상태가 안 좋",
        "상태 나쁜",
        "비정상",
    ),
    "degraded": (r"\bdegraded\b",),
    "maintenance": (r"\bmaintenance\b", "점검 중", "유지보수"),
}
_METRICS: dict[str, tuple[str, ...]] = {
    "cpu": (r"\bcpu\b", "씨피유"),
    "memory": (r"\bmemory\b", r"\bmem\b", r"\bram\b", "메모리"),
    "disk": (r"\bdisks?\b", "디스크"),
}
_ROLE_TOKENS = {
    "worker": "worker",
    "workers": "worker",
    "master": "master",
    "masters": "master",
    "edge": "edge",
    "kafka": "kafka",
    "broker": "kafka",
    "brokers": "kafka",
}
_ROLE_WORDS = {"워커": "worker", "마스터": "master", "엣지": "edge", "카프카": "kafka"}

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_KOREAN_COUNTS = {"한": 1, "두": 2, "세": 3, "네": 4, "다섯": 5}
_NUMBER = r"(\d+|" + "|".join(_NUMBER_WORDS) + ")"
_COUNTED = r"(?:jobs?|applications?|apps?|hosts?|nodes?|workers?|servers?|machines?|queues?|users?)"
_TOP_N = (
    re.compile(rf"\btop\s*{_NUMBER}\b", re.ASCII),
    re.compile(r"상위\s*(\d+)", re.ASCII),
    re.compile(r"(\d+)\s*개", re.ASCII),
    re.compile(r"(?<![가-힣])(" + "|".join(_KOREAN_COUNTS) + r")\s*개", re.ASCII),
    re.compile(rf"(?<!all )\b{_NUMBER}\s+(?:[a-z_-]+\s+){{0,2}}?{_COUNTED}\b", re.ASCII),
)
# "the one that is highest": asks for the first of a ranking.
_SUPERLATIVE = re.compile(
    r"\bthe most\b|\b(?:highest|longest|biggest|largest|heaviest|fullest|busiest|hottest|"
    r"oldest)\b|제일|가장",
    re.ASCII,
)
# "which jobs use the most memory" asks for a ranking, not for the first of it
_PLURAL = re.compile(
    r"\b(?:jobs|applications|apps|hosts|nodes|workers|servers|machines)\b|잡들|앱들|호스트들|노드들",
    re.ASCII,
)
# Names shaped like the inventory's keys that it does not hold: the tool they reach says
# which names exist, instead of an answer about everything.
HOST_SHAPE = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*-(?:worker|master|edge|kafka)-?\d+"
CLUSTER_SHAPE = r"[a-z][a-z0-9]*-(?:prod|prd|stage|staging|stg|dev|test|qa)"
_UNKNOWN_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hosts", re.compile(HOST_SHAPE)),
    ("clusters", re.compile(CLUSTER_SHAPE)),
    ("jobs", re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")),
)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%", re.ASCII)
_COMPARATOR_BEFORE = re.compile(
    r"(?:above|over|more than|greater than|exceed(?:s|ing)?|at least|under|below|less than|"
    r"higher than|lower than|>=?|<=?)\s*$",
    re.ASCII,
)
_COMPARATOR_AFTER = re.compile(r"^\s*(?:넘|이상|초과|이하|미만|아래|밑|보다)", re.ASCII)

_UNIT_HOURS = {"minute": 1 / 60, "min": 1 / 60, "hour": 1, "hr": 1, "h": 1, "day": 24, "d": 24}
_UNIT_HOURS |= {"week": 168, "w": 168}
_SINCE_NUMBER = re.compile(
    r"\b(?:last|past|previous|recent)\s+(\d+(?:\.\d+)?)\s*"
    r"(minute|min|hour|hr|h|day|d|week|w)s?\b",
    re.ASCII,
)
_SINCE_UNIT = re.compile(r"\b(?:last|past|previous)\s+(hour|day|week)\b", re.ASCII)
_SINCE_KOREAN = re.compile(
    r"(?:최근|지난)\s*(\d+(?:\.\d+)?)\s*(분|시간|일|주)|(\d+(?:\.\d+)?)\s*(분|시간|일|주)\s*"
    r"(?:동안|이내|내에|사이)",
    re.ASCII,
)
_KOREAN_UNIT_HOURS = {"분": 1 / 60, "시간": 1, "일": 24, "주": 168}
_SINCE_WORDS: tuple[tuple[str, float], ...] = (
    (r"\b(?:last|past)\s+(?:few|several)\s+days\b|\bfew days\b", 72),
    (r"\b(?:last|past)\s+couple\s+(?:of\s+)?days\b", 48),
    (r"\b(?:last|past|this)\s+week\b", 168),
    (r"\byesterday\b", 48),
    (r"\btoday\b", 24),
    ("며칠", 72),
    ("일주일|지난주|이번 주", 168),
    ("어제", 48),
    ("오늘|하루", 24),
)


@dataclass(frozen=True)
class Entities:
    """What a question names, each list in the order the question names it."""

    clusters: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    applications: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    job_names: list[str] = field(default_factory=list)
    racks: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # Spark job states, e.g. RUNNING
    top_n: int | None = None
    threshold_pct: float | None = None
    metric: str | None = None  # cpu, memory or disk
    since_hours: float | None = None
    roles: list[str] = field(default_factory=list)
    host_status: str | None = None  # not_healthy, degraded or maintenance (find_hosts' status)
    unknown_clusters: list[str] = field(default_factory=list)  # shaped like a key, not known
    unknown_hosts: list[str] = field(default_factory=list)
    unknown_jobs: list[str] = field(default_factory=list)


def _found(text: str, patterns: Iterable[str]) -> int | None:
    """Where the first of the patterns occurs in the text, if any does."""
    starts = [m.start() for p in patterns if (m := re.search(p, text, re.ASCII))]
    return min(starts) if starts else None


def _in_order(text: str, vocabulary: Mapping[str, tuple[str, ...]]) -> list[str]:
    hits = [(at, name) for name, ps in vocabulary.items() if (at := _found(text, ps)) is not None]
    return [name for _, name in sorted(hits)]


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBER_WORDS.get(word) or _KOREAN_COUNTS[word]


class EntityLinker:
    """Links a question to the keys the warehouse knows; build it once with `from_warehouse`
    and call `link` per question."""

    def __init__(
        self,
        clusters: Iterable[str] = (),
        hosts: Mapping[str, str | None] | None = None,
        applications: Iterable[str] = (),
        users: Iterable[str] = (),
        queues: Mapping[str, Iterable[str]] | None = None,
        job_names: Iterable[str] = (),
        racks: Iterable[str] = (),
    ) -> None:
        """`hosts` maps each host to its cluster, `queues` each queue to its clusters."""
        self._clusters = {c.lower(): c for c in clusters}
        self._host_cluster = dict(hosts or {})
        self._hosts = {h.lower(): h for h in self._host_cluster}
        self._applications = {a.lower(): a for a in applications}
        self._users = {u.lower(): u for u in users}
        self._queue_clusters = {q: set(cs) for q, cs in (queues or {}).items()}
        self._queues = {q.lower(): q for q in self._queue_clusters}
        self._queue_leaves: dict[str, list[str]] = {}
        for queue in sorted(self._queue_clusters):
            self._queue_leaves.setdefault(queue.rsplit(".", 1)[-1].lower(), []).append(queue)
        self._job_names = {n.lower(): n for n in job_names}
        self._racks = {r.lower(): r for r in racks}

    @property
    def clusters(self) -> frozenset[str]:
        """Every cluster id it knows (a follow-up's earlier subjects are checked against it)."""
        return frozenset(self._clusters.values())

    @classmethod
    def from_warehouse(cls, settings: Settings) -> EntityLinker:
        """The keys of the inventory and the streamed job state, read over a short read-only
        connection; tables not landed yet contribute nothing."""
        path = settings.warehouse_path
        if not path.is_file():
            raise FileNotFoundError(f"no warehouse at {path}: run the ingestion first")
        with open_warehouse(path, read_only=True) as conn:

            def rows(table: str, columns: str) -> list[tuple]:
                if not table_exists(conn, table):
                    return []
                return conn.execute(f"SELECT DISTINCT {columns} FROM {table}").fetchall()

            hosts = {h: c for h, c in rows("hosts", "host_id, cluster_id") if h}
            racks = [r for (r,) in rows("hosts", "rack") if r]
            clusters = {c for (c,) in rows("clusters", "cluster_id") if c}
            jobs: list[tuple] = []
            for table in ("spark_jobs", "spark_job_state"):
                jobs += rows(table, 'application_id, cluster_id, "user", queue, name')
        queues: dict[str, set[str]] = {}
        for _, cluster, _, queue, _ in jobs:
            if queue:
                queues.setdefault(queue, set()).update([cluster] if cluster else [])
        return cls(
            clusters=clusters | {c for c in hosts.values() if c} | {j[1] for j in jobs if j[1]},
            hosts=hosts,
            applications={j[0] for j in jobs if j[0]},
            users={j[2] for j in jobs if j[2]},
            queues=queues,
            job_names={j[4] for j in jobs if j[4]},
            racks=racks,
        )

    def link(self, question: str) -> Entities:
        text = question.lower()
        found: dict[str, dict[str, None]] = {
            kind: {}
            for kind in ("clusters", "hosts", "applications", "users", "queues", "names", "racks")
        }
        roles: dict[str, None] = {}
        unknown: dict[str, dict[str, None]] = {"hosts": {}, "clusters": {}, "jobs": {}}
        leaves: list[list[str]] = []
        for match in _TOKEN.finditer(question):
            token = match.group(0).lower()
            if token in self._hosts:
                host = self._hosts[token]
                found["hosts"][host] = None
                cluster = self._host_cluster[host]
                if cluster:
                    found["clusters"][cluster] = None
            for kind, known in (
                ("clusters", self._clusters),
                ("users", self._users),
                ("queues", self._queues),
                ("names", self._job_names),
                ("racks", self._racks),
            ):
                if token in known:
                    found[kind][known[token]] = None
            if token in self._applications or _APPLICATION.fullmatch(token):
                found["applications"][self._applications.get(token, token)] = None
            if token in self._queue_leaves and _names_a_queue(text, match.start(), match.end()):
                leaves.append(self._queue_leaves[token])
            if token in _ROLE_TOKENS:
                roles[_ROLE_TOKENS[token]] = None
            if not self._knows(token):
                shape = next((k for k, p in _UNKNOWN_SHAPES if p.fullmatch(token)), None)
                if shape is not None:
                    unknown[shape][match.group(0)] = None
        for word, role in _ROLE_WORDS.items():
            if word in text:
                roles[role] = None
        for candidates in leaves:
            found["queues"].update(dict.fromkeys(self._narrow(candidates, found["clusters"])))
        metrics = _in_order(text, _METRICS)
        statuses = _in_order(text, _HOST_STATUSES)
        return Entities(
            clusters=list(found["clusters"]),
            hosts=list(found["hosts"]),
            applications=list(found["applications"]),
            users=list(found["users"]),
            queues=list(found["queues"]),
            job_names=list(found["names"]),
            racks=list(found["racks"]),
            states=_in_order(text, _STATES),
            top_n=_top_n(text),
            threshold_pct=_threshold(text),
            metric=metrics[0] if metrics else None,
            since_hours=_since_hours(text),
            roles=list(roles),
            host_status=statuses[0] if statuses else None,
            unknown_clusters=list(unknown["clusters"]),
            unknown_hosts=list(unknown["hosts"]),
            unknown_jobs=list(unknown["jobs"]),
        )

    def _knows(self, token: str) -> bool:
        return any(
            token in known
            for known in (
                self._hosts,
                self._clusters,
                self._applications,
                self._users,
                self._queues,
                self._job_names,
                self._racks,
                self._queue_leaves,
            )
        ) or bool(_APPLICATION.fullmatch(token))

    def _narrow(self, queues: list[str], clusters: Iterable[str]) -> list[str]:
        """A queue named by its last part ("adhoc 큐"): those of the named clusters, when the
        part is shared."""
        wanted = set(clusters)
        on_cluster = [q for q in queues if self._queue_clusters[q] & wanted]
        return on_cluster or queues


def _names_a_queue(text: str, start: int, end: int) -> bool:
    """Whether a word is called a queue next to it ("adhoc 큐", "backfill queue", "queue
    adhoc"): a queue's last part alone is too common a word ("daily") to link."""
    after = re.match(r"\s*(?:큐|queue\b)", text[end:], re.ASCII)
    return bool(after or re.search(r"\bqueue\s*$", text[:start], re.ASCII))


def _top_n(text: str) -> int | None:
    for pattern in _TOP_N:
        if match := pattern.search(text):
            return _number(match.group(1))
    return 1 if _SUPERLATIVE.search(text) and not _PLURAL.search(text) else None


def _threshold(text: str) -> float | None:
    for match in _PERCENT.finditer(text):
        before, after = text[max(0, match.start() - 20) : match.start()], text[match.end() :]
        if _COMPARATOR_BEFORE.search(before) or _COMPARATOR_AFTER.match(after):
            value = float(match.group(1))
            if 0 <= value <= 100:
                return value
    return None


def _since_hours(text: str) -> float | None:
    if match := _SINCE_NUMBER.search(text):
        return float(match.group(1)) * _UNIT_HOURS[match.group(2)]
    if match := _SINCE_UNIT.search(text):
        return float(_UNIT_HOURS[match.group(1)])
    if match := _SINCE_KOREAN.search(text):
        number, unit = match.group(1, 2) if match.group(1) else match.group(3, 4)
        return float(number) * _KOREAN_UNIT_HOURS[unit]
    for pattern, hours in _SINCE_WORDS:
        if re.search(pattern, text, re.ASCII):
            return float(hours)
    return None
