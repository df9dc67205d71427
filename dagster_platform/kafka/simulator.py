"""A simulator of the sample clusters: the model behind the events it publishes
(`kafka/publisher.py` sends them to Kafka).

The flagship scenario needs live data: `etl-prod` under a CPU alarm, Spark jobs to inspect and
kill, and utilisation that visibly drops after an approved kill. The simulator starts from the
snapshot in `data/sample` and, every tick, emits one metric sample per host, the Spark jobs'
lifecycle events and the alerts its rules raise.

Clocks (`clock=`):

- `simulated` (the default of the class, for tests and benchmarks): tick n is stamped
  `start + n * step` (by default from SNAPSHOT_TIME, 10 s a tick). All randomness comes from
  one seeded generator, so the same seed and options give byte-identical events, whatever the
  wall clock does.
- `wall` (what `dagster-platform produce` and `dev` use): each tick is stamped with the real
  time (UTC, from the injectable `now`) and covers the real time since the previous tick, so
  "current" in the data means now, and when the simulator stops the data visibly ages.
  In both clocks the first tick covers one `step`.

Which times come from where:

- Every event's `ts` is its tick's time; it is the only time an event carries.
- The sample describes SNAPSHOT_TIME; the simulator starts at `start` (now, under the wall
  clock) and moves every time it takes from the sample by `start - SNAPSHOT_TIME`: the start
  times of the snapshot's RUNNING jobs (spark_jobs.csv), so a job that had run 3.7 h at the
  snapshot has run 3.7 h at the start, and each cluster's YARN timestamp in the ids of new
  applications, so a later run never reuses an earlier run's ids.
- A Spark job event carries no start time, and the `spark_job` ontology object takes its
  start_time from `spark_job_state.first_seen` (the job's earliest event `ts`) over the
  inventory's. So the first tick replays each snapshot job's SUBMITTED and RUNNING events
  stamped at its shifted start; an arriving job's first event is its SUBMITTED, at the tick it
  arrives (a job that waited ACCEPTED therefore shows its submit time as start_time); a job's
  end_time is its FINISHED, FAILED or KILLED event's `ts`.
- The snapshot's waiting (ACCEPTED) jobs are replayed too, at their shifted submit time, so
  their wait reads as it did at the snapshot; they are held by their YARN queue's limit, which
  the model does not have, so they wait on outside its cluster-wide queue (and never refill the
  room the scenario's kills free). The ingested files' ended jobs and incidents
  are not the simulator's and keep their snapshot times.

Model:

- YARN capacity holds per cluster: the vcores and memory of its RUNNING jobs never exceed the
  totals in clusters.csv (the snapshot is checked too). A job is SUBMITTED, then RUNNING if it
  fits and nobody waits before it, else ACCEPTED in its cluster's queue; the queue starts its
  jobs strictly first in, first out (one queue per cluster, no queue limits or preemption) as
  finishes and kills free room. While 20 jobs wait, no new light jobs arrive on that cluster.
- A worker's CPU is an idle baseline plus the cluster's running jobs' CPU share spread over the
  workers, scaled per host so that the initial tick reproduces the snapshot (plus noise).
  Memory follows the jobs' memory the same way; disk drifts slowly around the snapshot.
  Masters, edge and Kafka hosts run no executors and stay near their snapshot values.
- Light jobs (under 10 % of a cluster) finish after ~30 minutes on average (one in ten fails)
  and new ones arrive from the cluster's job history at the rate that keeps their number
  steady. Heavy jobs, the ones behind the scenario, run until they are killed. Every running
  job reports a RUNNING sample once a minute of the clock.
- `cluster_cpu_high` (sev2) fires once when a cluster's average worker CPU goes above 85 % and
  re-arms below 80 %; `host_disk_full` (sev2) fires once when a host's disk goes above 95 % and
  re-arms below 90 %. A recovery is the absence of further alerts: no "recovered" alert is sent,
  so every event on ops-alerts is something to act on.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

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

Clock = Literal["simulated", "wall"]
CLOCKS: tuple[Clock, ...] = ("simulated", "wall")
WAITING_STATES = ("SUBMITTED", "ACCEPTED")
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
MAX_WAITING = 20  # per cluster: beyond this, upstream schedulers hold new light jobs back
SAMPLE_EVERY = timedelta(minutes=1)  # a RUNNING sample of every running job
RUNAWAY_MIN_SHARE_PCT = 35.0
RUNAWAY_CLUSTER_TARGET_PCT = 97.0  # a runaway job burns whatever CPU the cluster has left
RUNAWAY_RAMP_S = 60.0  # it reaches its full share after a minute of running...
RUNAWAY_RAMP_LEAD_S = 10.0  # ...and shows this much of the ramp at its first sample
RUNAWAY_GB_PER_VCORE = 4.0
RUNAWAY_MIN_VCORES = 4  # what it asks for (and waits for) when less than that is left
DISK_FILL_PCT_PER_MIN = 9.0
DISK_FILL_LIMIT_PCT = 98.5


def utc_now() -> datetime:
    """The real current time, in UTC: the wall clock's default `now`."""
    return datetime.now(UTC)


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
    total_memory_gb: float
    worker_vcores: int
    worker_memory_gb: float
    app_prefix: str  # the YARN cluster timestamp in new application ids, shifted to `start`
    next_seq: int
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
    running_s: float = 0.0  # clock seconds it has been RUNNING in this simulation, as of now

    @property
    def share(self) -> float:
        if not self.runaway:
            return self.cpu_share_pct
        ramp = min(1.0, (self.running_s + RUNAWAY_RAMP_LEAD_S) / RUNAWAY_RAMP_S)
        return round(self.cpu_share_pct * ramp, 1)

    @property
    def heavy(self) -> bool:
        return self.runaway or self.cpu_share_pct >= HEAVY_SHARE_PCT


def _clamp(value: float, low: float = 0.0, high: float = 100.0) -> float:
    return round(min(high, max(low, value)), 1)


def _app_parts(application_id: str) -> tuple[str, int]:
    _, prefix, seq = application_id.rsplit("_", 2)
    return prefix, int(seq)


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError(f"the clock must give aware times, got {ts!r}")
    return ts.astimezone(UTC)


class ClusterSimulator:
    """The sample clusters on a simulated or the wall clock: :meth:`tick` gives the next step's
    events; incidents and approved kills change what the following ticks show."""

    def __init__(
        self,
        data_dir: Path,
        seed: int = 7,
        start: datetime | None = None,
        step: timedelta = timedelta(seconds=10),
        *,
        clock: Clock = "simulated",
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; known: {', '.join(CLOCKS)}")
        if clock == "wall" and start is not None:
            raise ValueError("the wall clock starts now: pass no start")
        if clock == "simulated" and now is not utc_now:
            raise ValueError("now= drives the wall clock: pass clock='wall' with it")
        self.seed = seed
        self.clock = clock
        self.step = step
        self._now = now
        self.start = _utc(now()) if clock == "wall" else start or SNAPSHOT_TIME
        self.shift = self.start - SNAPSHOT_TIME
        self.ticks = 0
        self._last: datetime | None = None  # the previous tick's time
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
            c["cluster_id"]: self._load_cluster(c, hosts, jobs, self.shift)
            for c in clusters.iter_rows(named=True)
        }
        running = list(jobs.filter(pl.col("state") == "RUNNING").iter_rows(named=True))
        self._jobs: dict[str, _Job] = {j["application_id"]: self._job_from_row(j) for j in running}
        # the snapshot's jobs as they started (and those it holds waiting, as they were
        # submitted: they are not modelled, so they wait on), replayed by the first tick
        waiting = jobs.filter(pl.col("state").is_in(WAITING_STATES)).iter_rows(named=True)
        self._replay = [
            (
                self._jobs[j["application_id"]]
                if j["state"] == "RUNNING"
                else self._job_from_row(j),
                j["state"],
                datetime.fromisoformat(j["start_time"]) + self.shift
                if j["start_time"]
                else self.start,
            )
            for j in [*running, *waiting]
        ]
        self._check_capacity()
        self._templates = {
            cid: [
                self._job_from_row(j)
                for j in jobs.filter(
                    (pl.col("cluster_id") == cid)
                    & (pl.col("state") != "RUNNING")
                    & (pl.col("cpu_share_pct") < HEAVY_SHARE_PCT)
                    & (pl.col("vcores") <= cluster.total_vcores)
                    & (pl.col("memory_gb") <= cluster.total_memory_gb)
                )
                .unique("name", keep="first", maintain_order=True)
                .iter_rows(named=True)
            ]
            for cid, cluster in self._clusters.items()
        }
        self._next_seq: dict[str, int] = {}
        for cluster in self._clusters.values():
            self._next_seq.setdefault(cluster.app_prefix, cluster.next_seq)
        # keep each cluster's light load steady: on average the jobs that arrive replace the CPU
        # share of those that finish (at least one light job, so every cluster sees some churn)
        self._arrivals_per_s = {
            cid: self._steady_light_jobs(cid) / LIGHT_JOB_SECONDS for cid in self._clusters
        }
        self._calibrate()
        self._cpu_armed = dict.fromkeys(self._clusters, True)
        self._disk_armed = {h.host_id: True for h in self._hosts}
        self._waiting: dict[str, deque[_Job]] = {cid: deque() for cid in self._clusters}
        self._submitted: list[_Job] = []  # injected, SUBMITTED by the next tick
        self._kills: list[str] = []

    @staticmethod
    def _load_cluster(
        row: dict[str, Any], hosts: pl.DataFrame, jobs: pl.DataFrame, shift: timedelta
    ) -> _Cluster:
        cid = row["cluster_id"]
        workers = hosts.filter((pl.col("cluster_id") == cid) & (pl.col("role") == "worker"))
        if workers.is_empty():
            raise ValueError(f"cluster {cid} has no worker hosts in hosts.csv")
        own = jobs.filter(pl.col("cluster_id") == cid).sort("start_time")
        if own.is_empty():
            raise ValueError(f"cluster {cid} has no Spark jobs in spark_jobs.csv")
        latest = own.row(-1, named=True)
        prefix = _app_parts(latest["application_id"])[0]
        edge = hosts.filter((pl.col("cluster_id") == cid) & (pl.col("role") == "edge"))
        return _Cluster(
            cluster_id=cid,
            total_vcores=int(row["total_vcores"]),
            total_memory_gb=float(row["total_memory_gb"]),
            worker_vcores=int(workers["vcores"].sum()),
            worker_memory_gb=float(workers["memory_gb"].sum()),
            app_prefix=str(int(prefix) + shift // timedelta(milliseconds=1)),
            next_seq=max(seq for p, seq in map(_app_parts, jobs["application_id"]) if p == prefix)
            + 1,
            queue_root=latest["queue"].rsplit(".", 1)[0],
            driver_host=(edge if not edge.is_empty() else workers)["host_id"][0],
            users=tuple(sorted(set(own["user"]))),
        )

    def _check_capacity(self) -> None:
        """The snapshot's RUNNING jobs must fit their clusters, or the model starts broken."""
        for cluster_id, cluster in self._clusters.items():
            vcores, memory = self._used(cluster_id)
            if vcores > cluster.total_vcores or memory > cluster.total_memory_gb:
                raise ValueError(
                    f"the RUNNING jobs of {cluster_id} in spark_jobs.csv hold {vcores} vcores "
                    f"and {memory:g} GB, over its {cluster.total_vcores} vcores and "
                    f"{cluster.total_memory_gb:g} GB in clusters.csv"
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

    def _used(self, cluster_id: str) -> tuple[int, float]:
        """Vcores and GB of memory the cluster's RUNNING jobs hold."""
        jobs = [j for j in self._jobs.values() if j.cluster_id == cluster_id]
        return sum(j.vcores for j in jobs), sum(j.memory_gb for j in jobs)

    def _fits(self, job: _Job) -> bool:
        cluster = self._clusters[job.cluster_id]
        vcores, memory = self._used(job.cluster_id)
        return (
            vcores + job.vcores <= cluster.total_vcores
            and memory + job.memory_gb <= cluster.total_memory_gb
        )

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

    def _advance(self) -> tuple[datetime, float]:
        """This tick's time and the clock seconds it covers (one step for the first tick)."""
        if self.clock == "simulated":
            return self.start + self.ticks * self.step, self.step.total_seconds()
        ts = _utc(self._now())
        if self._last is None:
            return ts, self.step.total_seconds()
        return ts, max(0.0, (ts - self._last).total_seconds())

    def tick(self) -> list[Outgoing]:
        """Advance one step: job lifecycle events first, then host samples, then alerts."""
        ts, seconds = self._advance()
        out = list(self._job_changes(ts, seconds))
        samples = [self._sample(host, ts, seconds) for host in self._hosts]
        out += [Outgoing(RAW_EVENTS.topic, s.host_id.encode(), s) for s in samples]
        out += self._alerts(samples, ts)
        self._last = ts
        self.ticks += 1
        return out

    def _job_changes(self, ts: datetime, seconds: float) -> Iterator[Outgoing]:
        for job in self._jobs.values():  # what ran through the tick ran `seconds` longer
            job.running_s += seconds
        for job, state, since in self._replay:
            yield self._job_event(job, "SUBMITTED", since, 0.0)
            if state != "SUBMITTED":
                yield self._job_event(job, state, since, job.share if state == "RUNNING" else 0.0)
        self._replay = []
        for application_id in self._kills:
            job = self._jobs.pop(application_id, None)
            share = 0.0
            if job is None:
                job = self._unqueue(application_id)
            else:
                share = job.share
            log.info("spark job killed", extra={"application_id": application_id})
            yield self._job_event(job, "KILLED", ts, share)
        self._kills.clear()
        hazard = -math.expm1(-seconds / LIGHT_JOB_SECONDS)  # a memoryless job ends within it
        for job in list(self._jobs.values()):
            if not job.heavy and self._rng.random() < hazard:
                del self._jobs[job.application_id]
                state = "FAILED" if self._rng.random() < FAILED_FRACTION else "FINISHED"
                yield self._job_event(job, state, ts, job.share)
        started: set[str] = set()
        for waiting in self._waiting.values():
            while waiting and self._fits(waiting[0]):
                job = waiting.popleft()
                self._jobs[job.application_id] = job
                started.add(job.application_id)
                yield self._job_event(job, "RUNNING", ts, job.share)
        for job in [*self._submitted, *self._arrivals(seconds)]:
            yield self._job_event(job, "SUBMITTED", ts, 0.0)
            waiting = self._waiting[job.cluster_id]
            if not waiting and self._fits(job):
                self._jobs[job.application_id] = job
                started.add(job.application_id)
                yield self._job_event(job, "RUNNING", ts, job.share)
            else:
                waiting.append(job)
                yield self._job_event(job, "ACCEPTED", ts, 0.0)
        self._submitted.clear()
        if self._sample_due(ts):
            for job in self._jobs.values():
                if job.application_id not in started:
                    yield self._job_event(job, "RUNNING", ts, job.share)

    def _sample_due(self, ts: datetime) -> bool:
        """The first tick, and each tick that crosses into a new minute of the clock."""
        if self._last is None:
            return True
        return (ts - self.start) // SAMPLE_EVERY != (self._last - self.start) // SAMPLE_EVERY

    def _arrivals(self, seconds: float) -> list[_Job]:
        """New light jobs from each cluster's history, at most one per cluster and tick."""
        jobs = []
        for cluster_id, per_s in self._arrivals_per_s.items():
            templates = self._templates[cluster_id]
            if (
                templates
                and len(self._waiting[cluster_id]) < MAX_WAITING
                and self._rng.random() < -math.expm1(-per_s * seconds)
            ):
                template = self._rng.choice(templates)
                share = max(0.1, round(template.cpu_share_pct * self._rng.uniform(0.8, 1.2), 1))
                application_id = self._new_application_id(cluster_id)
                jobs.append(
                    _Job(
                        **{
                            **asdict(template),
                            "application_id": application_id,
                            "cpu_share_pct": share,
                        }
                    )
                )
        return jobs

    def _unqueue(self, application_id: str) -> _Job:
        for waiting in self._waiting.values():
            for job in waiting:
                if job.application_id == application_id:
                    waiting.remove(job)
                    return job
        raise KeyError(application_id)

    def _sample(self, host: _Host, ts: datetime, seconds: float) -> HostMetricV1:
        rng = self._rng
        host.cpu_noise = 0.8 * host.cpu_noise + rng.gauss(0.0, 0.6)
        host.memory_noise = 0.9 * host.memory_noise + rng.gauss(0.0, 0.15)
        host.disk_noise = 0.95 * host.disk_noise + rng.gauss(0.0, 0.02)
        if host.filling:
            fill = DISK_FILL_PCT_PER_MIN * seconds / 60.0
            host.disk_pct = min(DISK_FILL_LIMIT_PCT, host.disk_pct + fill)
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

    def runaway_on(self, cluster_id: str) -> str | None:
        """The application id of a runaway job on the cluster, running or waiting, if any."""
        jobs = [*self._jobs.values(), *self._submitted, *self._waiting.get(cluster_id, ())]
        return next(
            (j.application_id for j in jobs if j.runaway and j.cluster_id == cluster_id), None
        )

    def inject_incident(self, kind: str, cluster_id: str = "etl-prod") -> str:
        """Start an incident on the cluster from the next tick on; returns what it hit.

        `cpu-spike`: a runaway backfill is submitted (its application id is returned). It asks
        for what the cluster has left after its running and waiting jobs (at least 4 vcores,
        4 GB each, and it waits ACCEPTED until they are free), yet its CPU ramps up over a
        minute of running to at least 35 % of the cluster, enough to take it to ~97 %: YARN
        schedules by vcores but does not cap the CPU an executor burns.
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
        burning = [
            j for j in [*self._jobs.values(), *self._submitted] if j.cluster_id == cluster_id
        ]
        ahead = [*burning, *self._waiting[cluster_id]]
        current = sum(j.share for j in burning)
        share = min(100.0, max(RUNAWAY_MIN_SHARE_PCT, RUNAWAY_CLUSTER_TARGET_PCT - current))
        free_vcores = cluster.total_vcores - sum(j.vcores for j in ahead)
        free_memory = cluster.total_memory_gb - sum(j.memory_gb for j in ahead)
        vcores = min(
            round(share / 100.0 * cluster.total_vcores),
            free_vcores,
            math.floor(free_memory / RUNAWAY_GB_PER_VCORE),
        )
        vcores = max(vcores, min(RUNAWAY_MIN_VCORES, cluster.total_vcores))
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
        )
        self._submitted.append(job)
        log.info(
            "incident injected",
            extra={"kind": kind, "cluster_id": cluster_id, "application_id": job.application_id},
        )
        return job.application_id

    def apply_action(self, command: ActionCommandV1) -> bool:
        """Carry out an approved command on a RUNNING or ACCEPTED job; False (logged) when it
        does not apply to anything."""
        job = self._jobs.get(command.target_id) or next(
            (
                j
                for j in self._waiting.get(command.cluster_id, ())
                if j.application_id == command.target_id
            ),
            None,
        )
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
