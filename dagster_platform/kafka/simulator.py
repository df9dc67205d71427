"""A deterministic simulator of the sample clusters: the model behind the events it publishes
(`kafka/publisher.py` sends them to Kafka).

The flagship scenario needs live data: `etl-prod` under a CPU alarm, Spark jobs to inspect and
kill, and utilisation that visibly drops after an approved kill. The simulator starts from the
snapshot in `data/sample` and, every tick (10 s of simulated time), emits one metric sample per
host, the Spark jobs' lifecycle events and the alerts its rules raise. All randomness comes
from one seeded generator and time is simulated, so the same seed and options always give
byte-identical events, whatever the wall clock does.

Model:

- A worker's CPU is an idle baseline plus the cluster's running jobs' CPU share spread over the
  workers, scaled per host so that the initial tick reproduces the snapshot (plus noise).
  Memory follows the jobs' memory the same way; disk drifts slowly around the snapshot.
  Masters, edge and Kafka hosts run no executors and stay near their snapshot values.
- Light jobs (under 10 % of a cluster) finish after ~30 simulated minutes on average (one in
  ten fails) and new ones arrive from the cluster's job history at the rate that keeps their
  number steady. Heavy jobs, the ones behind the scenario, run until they are killed.
- `cluster_cpu_high` (sev2) fires once when a cluster's average worker CPU goes above 85 % and
  re-arms below 80 %; `host_disk_full` (sev2) fires once when a host's disk goes above 95 % and
  re-arms below 90 %. A recovery is the absence of further alerts: no "recovered" alert is sent,
  so every event on ops-alerts is something to act on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from dagster_platform.kafka.events import (
    ALERT_EVENTS,
    RAW_EVENTS,
    ActionCommandV1,
    AlertV1,
    Event,
    HostMetricV1,
    SparkJobEventV1,
    encode,
)
from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)

SNAPSHOT_TIME = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # the moment data/sample describes
INCIDENT_KINDS: tuple[str, ...] = ("cpu-spike", "disk-full")
CPU_ALERT_PCT = 85.0
CPU_REARM_PCT = 80.0
DISK_ALERT_PCT = 95.0
DISK_REARM_PCT = 90.0

IDLE_CPU_PCT = 8.0  # OS, YARN NodeManager and HDFS DataNode on a worker with no executors
IDLE_MEMORY_PCT = 15.0
HEAVY_SHARE_PCT = 10.0
LIGHT_JOB_SECONDS = 1800.0
FAILED_FRACTION = 0.1
SAMPLE_EVERY_TICKS = 6  # a RUNNING sample of every job once a simulated minute
RUNAWAY_MIN_SHARE_PCT = 35.0
RUNAWAY_CLUSTER_TARGET_PCT = 97.0  # a runaway job takes whatever the cluster has left
RUNAWAY_RAMP_TICKS = 6
RUNAWAY_GB_PER_VCORE = 4.0
DISK_FILL_PER_TICK = 1.5
DISK_FILL_LIMIT_PCT = 98.5


@dataclass(frozen=True)
class Outgoing:
    """One event to publish: its topic, its key (what keeps its partition's order) and itself."""

    topic: str
    key: bytes
    event: Event

    @property
    def value(self) -> bytes:
        return encode(self.event)


@dataclass(frozen=True)
class _Cluster:
    cluster_id: str
    total_vcores: int
    worker_vcores: int
    worker_memory_gb: float
    app_prefix: str  # the YARN cluster timestamp in application ids
    queue_root: str
    driver_host: str
    users: tuple[str, ...]


@dataclass
class _Host:
    host_id: str
    cluster_id: str
    worker: bool
    vcores: int
    cpu_pct: float  # snapshot values, the centre the noise moves around
    memory_pct: float
    disk_pct: float
    cpu_factor: float = 1.0
    memory_factor: float = 1.0
    cpu_noise: float = 0.0
    memory_noise: float = 0.0
    disk_noise: float = 0.0
    filling: bool = False


@dataclass
class _Job:
    application_id: str
    cluster_id: str
    name: str
    queue: str
    user: str
    vcores: int
    memory_gb: float
    cpu_share_pct: float  # for a runaway job: the share it ramps up to
    driver_host: str | None
    runaway: bool = False
    announced: bool = True  # False until its SUBMITTED and RUNNING events are out
    age: int = 0

    @property
    def share(self) -> float:
        if not self.runaway:
            return self.cpu_share_pct
        return round(self.cpu_share_pct * min(1.0, (self.age + 1) / RUNAWAY_RAMP_TICKS), 1)

    @property
    def heavy(self) -> bool:
        return self.runaway or self.cpu_share_pct >= HEAVY_SHARE_PCT


def _clamp(value: float, low: float = 0.0, high: float = 100.0) -> float:
    return round(min(high, max(low, value)), 1)


def _app_parts(application_id: str) -> tuple[str, int]:
    _, prefix, seq = application_id.rsplit("_", 2)
    return prefix, int(seq)


class ClusterSimulator:
    """The sample clusters in simulated time: call :meth:`tick` for the next step's events."""

    def __init__(
        self,
        data_dir: Path,
        seed: int = 7,
        start: datetime | None = None,
        step: timedelta = timedelta(seconds=10),
    ) -> None:
        self.seed = seed
        self.start = start or SNAPSHOT_TIME
        self.step = step
        self.ticks = 0
        self._rng = random.Random(seed)
        self._counter = 0
        self._id_prefix = f"sim{seed}-{self.start:%Y%m%d%H%M%S}"
        clusters = pl.read_csv(data_dir / "clusters.csv")
        hosts = pl.read_csv(data_dir / "hosts.csv")
        jobs = pl.read_csv(data_dir / "spark_jobs.csv", infer_schema_length=None)
        self._hosts = [
            _Host(
                host_id=h["host_id"],
                cluster_id=h["cluster_id"],
                worker=h["role"] == "worker",
                vcores=int(h["vcores"]),
                cpu_pct=float(h["cpu_usage_pct"]),
                memory_pct=float(h["memory_usage_pct"]),
                disk_pct=float(h["disk_usage_pct"]),
            )
            for h in hosts.iter_rows(named=True)
        ]
        self._clusters = {
            c["cluster_id"]: self._load_cluster(c, hosts, jobs)
            for c in clusters.iter_rows(named=True)
        }
        self._jobs: dict[str, _Job] = {
            j["application_id"]: self._job_from_row(j)
            for j in jobs.filter(pl.col("state") == "RUNNING").iter_rows(named=True)
        }
        self._templates = {
            cid: [
                self._job_from_row(j)
                for j in jobs.filter(
                    (pl.col("cluster_id") == cid)
                    & (pl.col("state") != "RUNNING")
                    & (pl.col("cpu_share_pct") < HEAVY_SHARE_PCT)
                )
                .unique("name", keep="first", maintain_order=True)
                .iter_rows(named=True)
            ]
            for cid in self._clusters
        }
        self._next_seq = {
            prefix: max(seq for p, seq in map(_app_parts, jobs["application_id"]) if p == prefix)
            + 1
            for prefix in {c.app_prefix for c in self._clusters.values()}
        }
        # keep each cluster's light load steady: on average the jobs that arrive replace the CPU
        # share of those that finish (at least one light job, so every cluster sees some churn)
        self._arrival_probability = {
            cid: self._steady_light_jobs(cid) * step.total_seconds() / LIGHT_JOB_SECONDS
            for cid in self._clusters
        }
        self._calibrate()
        self._cpu_armed = dict.fromkeys(self._clusters, True)
        self._disk_armed = {h.host_id: True for h in self._hosts}
        self._kills: list[str] = []

    @staticmethod
    def _load_cluster(row: dict[str, Any], hosts: pl.DataFrame, jobs: pl.DataFrame) -> _Cluster:
        cid = row["cluster_id"]
        workers = hosts.filter((pl.col("cluster_id") == cid) & (pl.col("role") == "worker"))
        if workers.is_empty():
            raise ValueError(f"cluster {cid} has no worker hosts in hosts.csv")
        own = jobs.filter(pl.col("cluster_id") == cid).sort("start_time")
        if own.is_empty():
            raise ValueError(f"cluster {cid} has no Spark jobs in spark_jobs.csv")
        latest = own.row(-1, named=True)
        edge = hosts.filter((pl.col("cluster_id") == cid) & (pl.col("role") == "edge"))
        return _Cluster(
            cluster_id=cid,
            total_vcores=int(row["total_vcores"]),
            worker_vcores=int(workers["vcores"].sum()),
            worker_memory_gb=float(workers["memory_gb"].sum()),
            app_prefix=_app_parts(latest["application_id"])[0],
            queue_root=latest["queue"].rsplit(".", 1)[0],
            driver_host=(edge if not edge.is_empty() else workers)["host_id"][0],
            users=tuple(sorted(set(own["user"]))),
        )

    def _steady_light_jobs(self, cluster_id: str) -> float:
        templates = self._templates[cluster_id]
        if not templates:
            return 0.0
        light = sum(
            j.share for j in self._jobs.values() if j.cluster_id == cluster_id and not j.heavy
        )
        return max(1.0, light * len(templates) / sum(t.cpu_share_pct for t in templates))

    @staticmethod
    def _job_from_row(row: dict[str, Any]) -> _Job:
        return _Job(
            application_id=row["application_id"],
            cluster_id=row["cluster_id"],
            name=row["name"],
            queue=row["queue"],
            user=row["user"],
            vcores=int(row["vcores"]),
            memory_gb=float(row["memory_gb"]),
            cpu_share_pct=float(row["cpu_share_pct"]),
            driver_host=row["driver_host"],
        )

    # --- the model -------------------------------------------------------------------------

    def _worker_load(self, cluster_id: str) -> tuple[float, float]:
        """Percent of the workers' CPU and memory the cluster's running jobs use."""
        cluster = self._clusters[cluster_id]
        jobs = [j for j in self._jobs.values() if j.cluster_id == cluster_id]
        cpu = sum(j.share for j in jobs) * cluster.total_vcores / cluster.worker_vcores
        memory = 100.0 * sum(j.memory_gb for j in jobs) / cluster.worker_memory_gb
        return cpu, memory

    @staticmethod
    def _model(load_pct: float, idle_pct: float) -> float:
        return idle_pct + load_pct * (100.0 - idle_pct) / 100.0

    def _calibrate(self) -> None:
        """Scale each worker so that the model at the snapshot gives the snapshot's values."""
        for cluster_id in self._clusters:
            cpu, memory = self._worker_load(cluster_id)
            for host in self._hosts:
                if host.worker and host.cluster_id == cluster_id:
                    host.cpu_factor = host.cpu_pct / self._model(cpu, IDLE_CPU_PCT)
                    host.memory_factor = host.memory_pct / self._model(memory, IDLE_MEMORY_PCT)

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}-{self._counter:07d}"

    def _job_event(self, job: _Job, state: str, ts: datetime, share: float) -> Outgoing:
        event = SparkJobEventV1(
            event_id=self._next_id(),
            ts=ts,
            application_id=job.application_id,
            cluster_id=job.cluster_id,
            name=job.name,
            queue=job.queue,
            user=job.user,
            state=state,  # type: ignore[arg-type]
            vcores=job.vcores,
            memory_gb=job.memory_gb,
            cpu_share_pct=_clamp(share),
            driver_host=job.driver_host,
        )
        return Outgoing(RAW_EVENTS.topic, job.application_id.encode(), event)

    def _new_application_id(self, cluster_id: str) -> str:
        prefix = self._clusters[cluster_id].app_prefix
        seq = self._next_seq[prefix]
        self._next_seq[prefix] = seq + 1
        return f"application_{prefix}_{seq:04d}"

    # --- one tick --------------------------------------------------------------------------

    def tick(self) -> list[Outgoing]:
        """Advance one step: job lifecycle events first, then host samples, then alerts."""
        ts = self.start + self.ticks * self.step
        out = list(self._job_changes(ts))
        samples = [self._sample(host, ts) for host in self._hosts]
        out += [Outgoing(RAW_EVENTS.topic, s.host_id.encode(), s) for s in samples]
        out += self._alerts(samples, ts)
        self.ticks += 1
        return out

    def _job_changes(self, ts: datetime) -> Iterator[Outgoing]:
        for application_id in self._kills:
            job = self._jobs.pop(application_id)
            log.info("spark job killed", extra={"application_id": application_id})
            yield self._job_event(job, "KILLED", ts, job.share)
        self._kills.clear()
        hazard = self.step.total_seconds() / LIGHT_JOB_SECONDS
        for job in list(self._jobs.values()):
            if job.announced and not job.heavy and self._rng.random() < hazard:
                del self._jobs[job.application_id]
                state = "FAILED" if self._rng.random() < FAILED_FRACTION else "FINISHED"
                yield self._job_event(job, state, ts, job.share)
        for cluster_id, probability in self._arrival_probability.items():
            templates = self._templates[cluster_id]
            if templates and self._rng.random() < probability:
                template = self._rng.choice(templates)
                job = _Job(
                    **{
                        **asdict(template),
                        "application_id": self._new_application_id(cluster_id),
                        "cpu_share_pct": max(
                            0.1, round(template.cpu_share_pct * self._rng.uniform(0.8, 1.2), 1)
                        ),
                        "announced": False,
                    }
                )
                self._jobs[job.application_id] = job
        for job in self._jobs.values():
            if not job.announced:
                yield self._job_event(job, "SUBMITTED", ts, 0.0)
                yield self._job_event(job, "RUNNING", ts, job.share)
                job.announced = True
            elif self.ticks % SAMPLE_EVERY_TICKS == 0:
                yield self._job_event(job, "RUNNING", ts, job.share)
            job.age += 1

    def _sample(self, host: _Host, ts: datetime) -> HostMetricV1:
        rng = self._rng
        host.cpu_noise = 0.8 * host.cpu_noise + rng.gauss(0.0, 0.6)
        host.memory_noise = 0.9 * host.memory_noise + rng.gauss(0.0, 0.15)
        host.disk_noise = 0.95 * host.disk_noise + rng.gauss(0.0, 0.02)
        if host.filling:
            host.disk_pct = min(DISK_FILL_LIMIT_PCT, host.disk_pct + DISK_FILL_PER_TICK)
        if host.worker:
            cpu_load, memory_load = self._worker_load(host.cluster_id)
            cpu = self._model(cpu_load, IDLE_CPU_PCT) * host.cpu_factor
            memory = self._model(memory_load, IDLE_MEMORY_PCT) * host.memory_factor
        else:
            cpu, memory = host.cpu_pct, host.memory_pct
        cpu_pct = _clamp(cpu + host.cpu_noise)
        return HostMetricV1(
            event_id=self._next_id(),
            ts=ts,
            cluster_id=host.cluster_id,
            host_id=host.host_id,
            cpu_pct=cpu_pct,
            memory_pct=_clamp(memory + host.memory_noise),
            disk_pct=_clamp(host.disk_pct + host.disk_noise),
            load_1m=round(cpu_pct / 100.0 * host.vcores, 2),
        )

    def _alert(self, ts: datetime, key: str, **fields: Any) -> Outgoing:
        alert_id = f"{key}-{fields['rule']}-{ts:%Y%m%dT%H%M%SZ}"
        event = AlertV1(event_id=self._next_id(), ts=ts, alert_id=alert_id, **fields)
        return Outgoing(ALERT_EVENTS.topic, fields["cluster_id"].encode(), event)

    def _alerts(self, samples: list[HostMetricV1], ts: datetime) -> list[Outgoing]:
        workers = {h.host_id for h in self._hosts if h.worker}
        out = []
        for cluster_id in self._clusters:
            cpus = [
                s.cpu_pct for s in samples if s.cluster_id == cluster_id and s.host_id in workers
            ]
            average = round(sum(cpus) / len(cpus), 1)
            if self._cpu_armed[cluster_id] and average > CPU_ALERT_PCT:
                self._cpu_armed[cluster_id] = False
                top = sorted(
                    (j for j in self._jobs.values() if j.cluster_id == cluster_id),
                    key=lambda j: j.share,
                    reverse=True,
                )[:3]
                jobs = ", ".join(f"{j.name} ({j.application_id}, {j.share:.1f} %)" for j in top)
                out.append(
                    self._alert(
                        ts,
                        cluster_id,
                        cluster_id=cluster_id,
                        severity="sev2",
                        rule="cluster_cpu_high",
                        metric="cpu_pct",
                        value=average,
                        threshold=CPU_ALERT_PCT,
                        message=f"Average worker CPU on {cluster_id} is {average:.1f} % "
                        f"(above {CPU_ALERT_PCT:.0f} %) across {len(cpus)} workers. "
                        f"Top Spark jobs by CPU share: {jobs or 'none'}.",
                    )
                )
            elif average < CPU_REARM_PCT:
                self._cpu_armed[cluster_id] = True
        for sample in samples:
            if self._disk_armed[sample.host_id] and sample.disk_pct > DISK_ALERT_PCT:
                self._disk_armed[sample.host_id] = False
                out.append(
                    self._alert(
                        ts,
                        sample.host_id,
                        cluster_id=sample.cluster_id,
                        host_id=sample.host_id,
                        severity="sev2",
                        rule="host_disk_full",
                        metric="disk_pct",
                        value=sample.disk_pct,
                        threshold=DISK_ALERT_PCT,
                        message=f"Disk on {sample.host_id} ({sample.cluster_id}) is "
                        f"{sample.disk_pct:.1f} % full (above {DISK_ALERT_PCT:.0f} %).",
                    )
                )
            elif sample.disk_pct < DISK_REARM_PCT:
                self._disk_armed[sample.host_id] = True
        return out

    # --- incidents and actions -------------------------------------------------------------

    def check_incident(self, kind: str, cluster_id: str) -> None:
        """Raise ValueError for an unknown incident kind or cluster (before anything runs)."""
        if kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident {kind!r}; known: {', '.join(INCIDENT_KINDS)}")
        if cluster_id not in self._clusters:
            raise ValueError(f"unknown cluster {cluster_id!r}; known: {', '.join(self._clusters)}")

    def inject_incident(self, kind: str, cluster_id: str = "etl-prod") -> str:
        """Start an incident on the cluster from the next tick on; returns what it hit.

        `cpu-spike`: a runaway backfill starts (its application id is returned) and ramps up
        over a simulated minute to at least 35 % of the cluster, enough to take it to ~97 %.
        `disk-full`: the worker with the fullest disk (returned) fills up past 95 %.
        """
        self.check_incident(kind, cluster_id)
        cluster = self._clusters[cluster_id]
        if kind == "disk-full":
            candidates = [
                h for h in self._hosts if h.worker and h.cluster_id == cluster_id and not h.filling
            ]
            if not candidates:
                raise ValueError(f"every worker of {cluster_id} is already filling up")
            host = max(candidates, key=lambda h: h.disk_pct)
            host.filling = True
            log.info("incident injected", extra={"kind": kind, "host_id": host.host_id})
            return host.host_id
        current = sum(j.share for j in self._jobs.values() if j.cluster_id == cluster_id)
        share = min(100.0, max(RUNAWAY_MIN_SHARE_PCT, RUNAWAY_CLUSTER_TARGET_PCT - current))
        vcores = round(share / 100.0 * cluster.total_vcores)
        job = _Job(
            application_id=self._new_application_id(cluster_id),
            cluster_id=cluster_id,
            name="full_history_reprocess_backfill",
            queue=f"{cluster.queue_root}.backfill",
            user=self._rng.choice(cluster.users),
            vcores=vcores,
            memory_gb=vcores * RUNAWAY_GB_PER_VCORE,
            cpu_share_pct=round(share, 1),
            driver_host=cluster.driver_host,
            runaway=True,
            announced=False,
        )
        self._jobs[job.application_id] = job
        log.info(
            "incident injected",
            extra={"kind": kind, "cluster_id": cluster_id, "application_id": job.application_id},
        )
        return job.application_id

    def apply_action(self, command: ActionCommandV1) -> bool:
        """Carry out an approved command; False (logged) when it does not apply to anything."""
        job = self._jobs.get(command.target_id)
        if (
            command.action != "kill_spark_job"
            or job is None
            or job.cluster_id != command.cluster_id
            or command.target_id in self._kills
        ):
            log.warning(
                "action ignored: no such running job",
                extra={
                    "action_id": command.action_id,
                    "action": command.action,
                    "cluster_id": command.cluster_id,
                    "target_id": command.target_id,
                },
            )
            return False
        self._kills.append(command.target_id)
        log.info(
            "action applied",
            extra={"action_id": command.action_id, "target_id": command.target_id},
        )
        return True
