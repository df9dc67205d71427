"""The simulator's clocks: the wall clock stamps ticks now and covers the real time between
them; the sample's times move with the start, so the snapshot's jobs keep their age."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import duckdb
import polars as pl
import pytest
import yaml

from dagster_platform.cli.produce import Clock as CliClock
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.events import HostMetricV1, SparkJobEventV1
from dagster_platform.kafka.publisher import run_producer
from dagster_platform.kafka.rollups import ROLLUPS, refresh
from dagster_platform.kafka.simulator import CLOCKS, SNAPSHOT_TIME, ClusterSimulator, Outgoing
from tests.support.state import ONTOLOGY_DIR, SAMPLE_DIR

T0 = datetime(2027, 3, 5, 12, 34, 56, 789000, tzinfo=UTC)


def _clock(*times: datetime) -> Callable[[], datetime]:
    """A `now` that gives `times` in turn: the construction reads the first."""
    it: Iterator[datetime] = iter(times)
    return lambda: next(it)


def _jobs(out: list[Outgoing]) -> list[SparkJobEventV1]:
    return [o.event for o in out if isinstance(o.event, SparkJobEventV1)]


def _host_ts(out: list[Outgoing]) -> set[datetime]:
    return {o.event.ts for o in out if isinstance(o.event, HostMetricV1)}


def _snapshot_running() -> dict[str, datetime]:
    jobs = pl.read_csv(SAMPLE_DIR / "spark_jobs.csv", infer_schema_length=None)
    return {
        r["application_id"]: datetime.fromisoformat(r["start_time"])
        for r in jobs.filter(pl.col("state") == "RUNNING").iter_rows(named=True)
    }


def test_the_wall_clock_stamps_each_tick_now_and_advances_with_real_time() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR, clock="wall")
    [first] = _host_ts(simulator.tick())
    assert abs(first - datetime.now(UTC)) < timedelta(seconds=5)
    time.sleep(0.3)
    [second] = _host_ts(simulator.tick())
    assert second - first >= timedelta(seconds=0.3)
    assert abs(second - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_wall_tick_covers_the_real_time_since_the_last() -> None:
    later = T0 + timedelta(seconds=1)
    simulator = ClusterSimulator(
        SAMPLE_DIR,
        clock="wall",
        now=_clock(T0, T0, later, later + timedelta(minutes=2), later + timedelta(hours=12)),
    )
    first = _jobs(simulator.tick())
    assert {e.ts for e in first if e.state == "RUNNING"} >= {T0}  # the minute's samples
    runaway = simulator.inject_incident("cpu-spike", "analytics-prod")
    second = _jobs(simulator.tick())  # one second later, inside the same minute: no samples
    submitted = {e.application_id for e in second if e.state == "SUBMITTED"}
    assert not [e for e in second if e.state == "RUNNING" and e.application_id not in submitted]
    [started] = [e for e in second if e.application_id == runaway and e.state == "RUNNING"]
    assert started.ts == later
    third = _jobs(simulator.tick())  # two minutes later: a new minute, the ramp done
    samples = {e.application_id: e for e in third if e.state == "RUNNING"}
    assert runaway in samples and len(samples) > 10
    assert samples[runaway].cpu_share_pct == pytest.approx(6 * started.cpu_share_pct, abs=0.3)
    # twelve hours in one tick: the light jobs of the snapshot are (almost surely) all done
    ended = {e.application_id for e in _jobs(simulator.tick()) if e.state in ("FINISHED", "FAILED")}
    light = {a for a, e in samples.items() if e.cpu_share_pct < 10 and a != runaway}
    assert light and light <= ended


def test_the_wall_clock_shifts_the_snapshot_so_each_running_job_keeps_its_age() -> None:
    simulator = ClusterSimulator(SAMPLE_DIR, clock="wall", now=_clock(T0, T0))
    assert simulator.start == T0 and simulator.shift == T0 - SNAPSHOT_TIME
    out = simulator.tick()
    first_seen: dict[str, datetime] = {}
    for event in _jobs(out):
        first_seen.setdefault(event.application_id, event.ts)
    snapshot = _snapshot_running()
    assert set(snapshot) <= set(first_seen)
    for application_id, started in snapshot.items():
        assert T0 - first_seen[application_id] == SNAPSHOT_TIME - started
    assert _host_ts(out) == {T0}
    runaway = simulator.inject_incident("cpu-spike")  # a new id: the shifted YARN timestamp
    yarn_timestamp = int(runaway.split("_")[1])
    assert yarn_timestamp == 1794712500000 + (T0 - SNAPSHOT_TIME) // timedelta(milliseconds=1)


def test_the_snapshots_waiting_jobs_keep_their_wait_and_stay_waiting() -> None:
    """ACCEPTED at the snapshot: replayed at the shifted submit time, never started."""
    jobs = pl.read_csv(SAMPLE_DIR / "spark_jobs.csv", infer_schema_length=None)
    waiting = {
        r["application_id"]: datetime.fromisoformat(r["start_time"])
        for r in jobs.filter(pl.col("state") == "ACCEPTED").iter_rows(named=True)
    }
    assert waiting
    simulator = ClusterSimulator(
        SAMPLE_DIR, clock="wall", now=_clock(T0, T0, T0 + timedelta(hours=1))
    )
    first = [e for e in _jobs(simulator.tick()) if e.application_id in waiting]
    assert {(e.application_id, e.state) for e in first} == {
        (a, s) for a in waiting for s in ("SUBMITTED", "ACCEPTED")
    }
    for event in first:
        assert T0 - event.ts == SNAPSHOT_TIME - waiting[event.application_id]
    assert not [e for e in _jobs(simulator.tick()) if e.application_id in waiting]


def test_the_simulated_clock_replays_the_snapshot_at_its_own_times() -> None:
    out = ClusterSimulator(SAMPLE_DIR).tick()
    replayed = {e.application_id: e.ts for e in _jobs(out) if e.state == "SUBMITTED"}
    assert {a: replayed[a] for a in _snapshot_running()} == _snapshot_running()
    assert _host_ts(out) == {SNAPSHOT_TIME}
    with pytest.raises(ValueError, match="clock='wall'"):
        ClusterSimulator(SAMPLE_DIR, now=lambda: T0)
    with pytest.raises(ValueError, match="pass no start"):
        ClusterSimulator(SAMPLE_DIR, start=T0, clock="wall")


def test_the_spark_job_object_shows_the_shifted_start(tmp_path: Path) -> None:
    """Landed and rolled up, a snapshot job's earliest streamed event is the start_time that
    the `spark_job` ontology object shows over the inventory's."""
    simulator = ClusterSimulator(
        SAMPLE_DIR, clock="wall", now=_clock(T0, T0, T0 + timedelta(minutes=5))
    )
    out = simulator.tick() + simulator.tick()
    events = tmp_path / "events.ndjson"
    events.write_text(
        "\n".join(
            json.dumps({**json.loads(o.value), "kafka_offset": offset})
            for offset, o in enumerate(out)
            if isinstance(o.event, SparkJobEventV1)
        )
    )
    [spec] = [r for r in ROLLUPS if r.name == "spark_job_state"]
    objects = yaml.safe_load((ONTOLOGY_DIR / "objects.yaml").read_text())
    backing = objects["object_types"]["spark_job"]["backing"]["sql"]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        conn.execute(
            "CREATE TABLE spark_job_events AS SELECT * REPLACE (ts::TIMESTAMPTZ AS ts), "
            "now() AS landed_at FROM read_json(?, format = 'newline_delimited')",
            [str(events)],
        )
        conn.execute(
            "CREATE TABLE spark_jobs AS SELECT * FROM read_csv(?)",
            [str(SAMPLE_DIR / "spark_jobs.csv")],
        )
        refresh(conn, spec)
        starts = dict(
            conn.execute(f"SELECT application_id, start_time FROM ({backing})").fetchall()
        )
    for application_id, started in _snapshot_running().items():
        assert starts[application_id] == started + (T0 - SNAPSHOT_TIME)


def test_run_producer_on_the_wall_clock_schedules_incidents_in_real_seconds(
    kafka_broker: EmbeddedBroker,
) -> None:
    report = run_producer(
        kafka_broker.bootstrap_servers,
        ClusterSimulator(SAMPLE_DIR, clock="wall"),
        rate=0,
        duration=1.3,
        incident_every=0.5,
    )
    assert report.clock == "wall" and report.delivery_failures == 0
    assert report.ticks > 10  # flat out, yet incidents follow the seconds, not the ticks
    # the first at 0.5 s; the one due at 1.0 s waits while that runaway still burns
    assert [i["kind"] for i in report.incidents] == ["cpu-spike"]
    assert report.incidents_deferred == 1


def test_the_cli_offers_the_simulators_clocks() -> None:
    assert set(get_args(CliClock)) == set(CLOCKS)
