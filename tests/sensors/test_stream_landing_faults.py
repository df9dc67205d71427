"""Faults of a landing done by the stream sensor itself, against the real broker and DuckDB file.

Each kill is a real SIGKILL of a process evaluating the real sensor; what is injected is only
*when*: the child wraps one function of the landing so that it kills itself right there
(before the DuckDB commit, between it and the Kafka commit, after both). Every test then lets
an ordinary tick finish and checks that each produced message is stored exactly once, that
the consumer group agrees with the warehouse and that the rollups count each row once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.events import RAW_EVENTS
from resources import KafkaResource, WarehouseResource
from sensors.stream_sensors import build_stream_sensor
from tests.support.events import produce, samples

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RAW = build_stream_sensor(RAW_EVENTS, interval_seconds=1)

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import dagster as dg
    from dagster_platform.kafka import landing, write
    from resources import KafkaResource, WarehouseResource
    from dagster_platform.kafka.events import RAW_EVENTS
    from sensors.stream_sensors import build_stream_sensor

    servers, database, step = sys.argv[1:4]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "before-duckdb-commit":
        commit = write.LandingTransaction.commit
        def dying_commit(self):
            die()
        write.LandingTransaction.commit = dying_commit
    elif step in ("between-commits", "after-both"):
        to_group = landing.commit_to_group
        def dying_commit_to_group(*args, **kwargs):
            if step == "between-commits":
                die()
            to_group(*args, **kwargs)
            die()
        landing.commit_to_group = dying_commit_to_group

    sensor = build_stream_sensor(RAW_EVENTS, interval_seconds=1)
    resources = {
        "kafka": KafkaResource(bootstrap_servers=servers, timeout_seconds=4),
        "warehouse": WarehouseResource(database=database),
    }
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    reason = result if isinstance(result, dg.SkipReason) else result.skip_reason
    print("TICK", reason.skip_message)
    """
)


@pytest.fixture
def setup(private_broker: EmbeddedBroker, tmp_path: Path, state_dir: Path) -> dict:
    database = tmp_path / "warehouse.duckdb"
    return {
        "broker": private_broker,
        "database": database,
        "resources": {
            "kafka": KafkaResource(
                bootstrap_servers=private_broker.bootstrap_servers, timeout_seconds=4
            ),
            "warehouse": WarehouseResource(database=str(database)),
        },
    }


def child(setup: dict, step: str = "none") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, setup["broker"].bootstrap_servers,
         str(setup["database"]), step],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def tick(setup: dict) -> str:
    with dg.instance_for_test() as instance:
        result = RAW(dg.build_sensor_context(instance=instance, resources=setup["resources"]))
    reason = result if isinstance(result, dg.SkipReason) else result.skip_reason
    return reason.skip_message


def land_everything(setup: dict) -> list[str]:
    said = []
    for _ in range(10):
        said.append(tick(setup))
        if "no backlog" in said[-1]:
            return said
    raise AssertionError(f"the backlog never emptied: {said}")


def query(setup: dict, sql: str) -> list[tuple]:
    with duckdb.connect(str(setup["database"]), read_only=True) as conn:
        return conn.execute(sql).fetchall()


DISTINCT_ROWS = "SELECT count(*), count(DISTINCT event_id) FROM host_metrics"


def assert_exactly_once(setup: dict, produced: int) -> None:
    ((rows, distinct),) = query(setup, DISTINCT_ROWS)
    assert rows == distinct == produced
    (counted,) = query(
        setup,
        "SELECT sum(messages_landed + messages_dead) FROM stream_offsets "
        "WHERE kafka_topic = 'raw-data-stream'",
    )[0]
    assert counted == produced
    # the rollups, refreshed with the last batch, count every row once
    assert query(setup, "SELECT sum(samples) FROM cluster_utilization_1m") == [(produced,)]


@pytest.mark.parametrize("step", ["before-duckdb-commit", "between-commits", "after-both"])
def test_a_sensor_killed_at_each_step_loses_nothing_and_doubles_nothing(
    setup: dict, step: str
) -> None:
    produce(setup["broker"], "raw-data-stream", samples(50))
    dying = child(setup, step)
    output, _ = dying.communicate(timeout=120)
    assert dying.returncode == -signal.SIGKILL, output
    stored = query(setup, "SELECT count(*) FROM host_metrics")[0][0]
    assert stored == (0 if step == "before-duckdb-commit" else 200)
    land_everything(setup)
    # one more batch brings the rollups a kill after both commits left behind
    produce(setup["broker"], "raw-data-stream", samples(1))
    land_everything(setup)
    assert_exactly_once(setup, 204)


def test_two_sensor_landings_at_once_store_each_message_once(setup: dict) -> None:
    produce(setup["broker"], "raw-data-stream", samples(5_000))
    first, second = child(setup), child(setup)
    outputs = [p.communicate(timeout=180)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert any("landed here" in out for out in outputs), outputs
    land_everything(setup)
    assert_exactly_once(setup, 20_000)


def test_the_broker_stopped_mid_batch_is_a_skip_and_what_landed_is_whole(setup: dict) -> None:
    produce(setup["broker"], "raw-data-stream", samples(1))
    assert "landed here" in tick(setup)  # the warehouse exists whenever the broker stops
    produce(setup["broker"], "raw-data-stream", samples(15_000))
    threading.Timer(0.5, setup["broker"].stop).start()
    said = tick(setup)  # never a failed tick: a skip naming the broker, or a landed batch
    assert "broker unreachable" in said or "landed here" in said, said
    ((rows, distinct),) = query(setup, DISTINCT_ROWS)
    assert rows == distinct
    (counted,) = query(
        setup, "SELECT coalesce(sum(messages_landed + messages_dead), 0) FROM stream_offsets"
    )[0]
    assert counted == rows


HOLD = textwrap.dedent(
    """
    import sys, time, duckdb
    conn = duckdb.connect(sys.argv[1])
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.close()
    """
)


def hold_warehouse(setup: dict, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(setup["database"]), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_batch_due_while_another_writer_holds_the_warehouse_waits_then_lands(
    setup: dict,
) -> None:
    produce(setup["broker"], "raw-data-stream", samples(10))
    holder = hold_warehouse(setup, 3)
    started = time.monotonic()
    said = tick(setup)
    assert "landed here" in said and time.monotonic() - started > 2
    holder.wait(10)
    land_everything(setup)
    assert_exactly_once(setup, 40)


def test_a_writer_holding_it_past_the_wait_leaves_the_batch_to_the_next_tick(
    setup: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PLATFORM_STREAM_WAREHOUSE_WAIT", "1")
    produce(setup["broker"], "raw-data-stream", samples(10))
    tick(setup)  # the tables exist
    produce(setup["broker"], "raw-data-stream", samples(10))
    holder = hold_warehouse(setup, 6)
    said = tick(setup)
    assert "held by another writer" in said and "next tick" in said
    holder.wait(15)
    land_everything(setup)
    assert_exactly_once(setup, 80)
