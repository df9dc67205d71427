"""YARN capacity in the simulator: RUNNING jobs fit their cluster, the rest wait ACCEPTED in
arrival order and start when finishes or kills free room."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from dagster_platform.kafka.events import SparkJobEventV1
from dagster_platform.kafka.simulator import ClusterSimulator, Outgoing
from tests.support.scenario import kill_command
from tests.support.state import SAMPLE_DIR

TOP_TWO = ("application_1794712500000_0488", "application_1794712500000_0492")
# the snapshot's waiting jobs, held by their YARN queue's limit (which the model does not
# have): they wait on outside the cluster-wide first-in, first-out queue the model keeps
HELD = frozenset(
    pl.read_csv(SAMPLE_DIR / "spark_jobs.csv").filter(pl.col("state") == "ACCEPTED")[
        "application_id"
    ]
)
CAPACITY = {
    r["cluster_id"]: (r["total_vcores"], r["total_memory_gb"])
    for r in pl.read_csv(SAMPLE_DIR / "clusters.csv").iter_rows(named=True)
}


class Yarn:
    """The cluster as the stream tells it: what runs and what waits, per cluster."""

    def __init__(self) -> None:
        self.running: dict[str, SparkJobEventV1] = {}
        self.waiting: dict[str, list[str]] = defaultdict(list)
        self.started_from_queue: dict[str, list[str]] = defaultdict(list)
        self.accepted: dict[str, list[str]] = defaultdict(list)
        self.submitted: set[str] = set()  # not yet RUNNING or ACCEPTED

    def follow(self, out: list[Outgoing]) -> list[SparkJobEventV1]:
        events = [o.event for o in out if isinstance(o.event, SparkJobEventV1)]
        for event in events:
            queue = self.waiting[event.cluster_id]
            if event.state == "SUBMITTED":
                self.submitted.add(event.application_id)
            elif event.state == "ACCEPTED":
                self.submitted.discard(event.application_id)
                if event.application_id in HELD:
                    continue
                queue.append(event.application_id)
                self.accepted[event.cluster_id].append(event.application_id)
            elif event.state == "RUNNING":
                if event.application_id in queue:
                    assert queue[0] == event.application_id, "the queue is first in, first out"
                    queue.pop(0)
                    self.started_from_queue[event.cluster_id].append(event.application_id)
                elif event.application_id in self.submitted:
                    assert not queue, "a new job starts at once only when nobody waits"
                self.submitted.discard(event.application_id)
                self.running[event.application_id] = event
            elif event.state in ("FINISHED", "FAILED", "KILLED"):
                self.running.pop(event.application_id, None)
                if event.application_id in queue:
                    queue.remove(event.application_id)
        return events

    def used(self, cluster_id: str) -> tuple[int, float]:
        jobs = [j for j in self.running.values() if j.cluster_id == cluster_id]
        return sum(j.vcores for j in jobs), sum(j.memory_gb for j in jobs)

    def assert_within_capacity(self) -> None:
        for cluster_id, (vcores, memory) in CAPACITY.items():
            used_vcores, used_memory = self.used(cluster_id)
            assert used_vcores <= vcores and used_memory <= memory, cluster_id


def test_running_jobs_never_exceed_capacity_over_many_ticks() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR, seed=3)
    yarn = Yarn()
    for tick in range(2000):
        if tick in (1, 2, 400):
            simulator.inject_incident("cpu-spike", "etl-prod")
        if tick == 600:
            simulator.inject_incident("cpu-spike", "analytics-prod")
        yarn.follow(simulator.tick())
        yarn.assert_within_capacity()
        if tick == 0:
            assert yarn.used("etl-prod") == (564, 3264.0)  # the snapshot, as it is
    assert yarn.accepted["etl-prod"] and yarn.accepted["analytics-prod"]
    assert yarn.started_from_queue["etl-prod"]
    for cluster_id, started in yarn.started_from_queue.items():
        order = yarn.accepted[cluster_id]
        assert started == order[: len(started)], "the queue starts jobs in arrival order"


def test_a_runaway_takes_what_is_left_then_waits_accepted_until_a_kill_frees_room() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR)
    yarn = Yarn()
    yarn.follow(simulator.tick())
    free_vcores = CAPACITY["etl-prod"][0] - yarn.used("etl-prod")[0]
    first = simulator.inject_incident("cpu-spike")
    second = simulator.inject_incident("cpu-spike")
    events = yarn.follow(simulator.tick())
    yarn.assert_within_capacity()
    states = {a: [e.state for e in events if e.application_id == a] for a in (first, second)}
    assert states == {first: ["SUBMITTED", "RUNNING"], second: ["SUBMITTED", "ACCEPTED"]}
    assert 0 < yarn.running[first].vcores <= free_vcores
    waiting = next(e for e in events if e.application_id == second)
    assert (waiting.vcores, waiting.cpu_share_pct) == (4, 0.0)
    assert simulator.apply_action(kill_command(TOP_TWO[0]))
    events = yarn.follow(simulator.tick())
    assert [e.state for e in events if e.application_id == second] == ["RUNNING"]
    assert [e.state for e in events if e.application_id == TOP_TWO[0]] == ["KILLED"]
    yarn.assert_within_capacity()


def test_an_arrival_on_a_full_cluster_waits_and_starts_after_akill_command() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR)
    yarn = Yarn()
    simulator.inject_incident("cpu-spike")  # takes what etl-prod has left
    for _ in range(500):
        yarn.follow(simulator.tick())
        if yarn.waiting["etl-prod"]:
            break
    [waiting, *_] = yarn.waiting["etl-prod"]
    assert waiting not in yarn.running
    assert all(simulator.apply_action(kill_command(job)) for job in TOP_TWO)
    events = yarn.follow(simulator.tick())
    assert [e.state for e in events if e.application_id in TOP_TWO] == ["KILLED", "KILLED"]
    assert [e.state for e in events if e.application_id == waiting] == ["RUNNING"]
    assert not yarn.waiting["etl-prod"]
    yarn.assert_within_capacity()


def test_a_waiting_job_can_be_killed() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR)
    yarn = Yarn()
    yarn.follow(simulator.tick())
    simulator.inject_incident("cpu-spike")
    waiting = simulator.inject_incident("cpu-spike")
    yarn.follow(simulator.tick())
    assert yarn.waiting["etl-prod"] == [waiting]
    assert simulator.apply_action(kill_command(waiting))
    events = yarn.follow(simulator.tick())
    [killed] = [e for e in events if e.application_id == waiting]
    assert (killed.state, killed.cpu_share_pct) == ("KILLED", 0.0)
    assert not yarn.waiting["etl-prod"] and waiting not in yarn.running


def test_a_snapshot_over_capacity_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, data)
    jobs = pl.read_csv(data / "spark_jobs.csv", infer_schema_length=None)
    extra = jobs.filter(pl.col("application_id") == TOP_TWO[1]).with_columns(
        application_id=pl.lit("application_1794712500000_0999")
    )
    pl.concat([jobs, extra]).write_csv(data / "spark_jobs.csv")
    with pytest.raises(ValueError, match=r"etl-prod .* 684 vcores .* over its 576 vcores"):
        ClusterSimulator(data)
