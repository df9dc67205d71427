"""Events/s into DuckDB: consume-only (the limit), our landing path, and the naive way.

All three read the same pre-produced host metric events from the same private broker:
(a) confluent-kafka consuming and decoding nothing — the ceiling on this machine;
(b) `land_stream`: consume, decode and validate with msgspec, write rows, dead letters and
    offsets to DuckDB in one transaction, commit to the consumer group;
(c) `json.loads` per message and one INSERT per row — measured on the first NAIVE_EVENTS
    events, because it would take minutes on all of them (its rate is what is compared).
(a) and (b) run ROUNDS times, alternating, each landing into a fresh warehouse; the medians are
compared, because the broker shares the machine's two cores and one round can stall.

Each round also counts the CPU time it took, this process's and the broker's: the CPU that (b)
needs, spread over every core, bounds how close to (a) it can come on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import psutil
from confluent_kafka import Consumer, TopicPartition

from benchmarks.common import fresh_topic, machine, metric_payloads, private_broker, produce_all
from dagster_platform.kafka.events import RAW_EVENTS, StreamFamily
from dagster_platform.kafka.landing import land_stream

EVENTS = 200_000
NAIVE_EVENTS = 20_000
PARTITIONS = 3
ROUNDS = 3


def _consumer(bootstrap_servers: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )


class CpuClock:
    """CPU seconds (user + system) of this process and the broker's since the last reading."""

    def __init__(self, broker_pid: int):
        self.processes = [psutil.Process(), psutil.Process(broker_pid)]
        self.last = self._now()

    def _now(self) -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in self.processes))

    def lap(self) -> float:
        now = self._now()
        spent, self.last = now - self.last, now
        return spent


def consume_only(bootstrap_servers: str, topic: str, events: int, group: str) -> float:
    consumer = _consumer(bootstrap_servers, group)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    received = 0
    started = time.perf_counter()
    while received < events:
        received += sum(1 for m in consumer.consume(10_000, timeout=1.0) if m.error() is None)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def landing(bootstrap_servers: str, topic: str, database: Path) -> tuple[float, int]:
    family = StreamFamily(f"bench_{database.stem}", topic, RAW_EVENTS.tables)
    started = time.perf_counter()
    report = land_stream(
        lambda: contextlib.closing(duckdb.connect(str(database))),
        bootstrap_servers,
        family,
        max_messages=EVENTS,
    )
    return time.perf_counter() - started, report.landed_total


def naive(bootstrap_servers: str, topic: str, database: Path, events: int) -> float:
    conn = duckdb.connect(str(database))
    conn.execute(
        "CREATE TABLE naive (kafka_partition INTEGER, kafka_offset BIGINT, event_id VARCHAR, "
        "ts TIMESTAMPTZ, cluster_id VARCHAR, host_id VARCHAR, cpu_pct DOUBLE, "
        "memory_pct DOUBLE, disk_pct DOUBLE, load_1m DOUBLE)"
    )
    consumer = _consumer(bootstrap_servers, "bench-naive")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    done = 0
    started = time.perf_counter()
    while done < events:
        for message in consumer.consume(min(1_000, events - done), timeout=1.0):
            if message.error() is not None:
                continue
            event = json.loads(message.value())
            conn.execute(
                "INSERT INTO naive VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    message.partition(), message.offset(), event["event_id"], event["ts"],
                    event["cluster_id"], event["host_id"], event["cpu_pct"],
                    event["memory_pct"], event["disk_pct"], event["load_1m"],
                ],
            )  # fmt: skip
            done += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    conn.close()
    return elapsed


def run() -> dict[str, Any]:
    with private_broker() as broker, tempfile.TemporaryDirectory(prefix="bench-") as folder:
        servers = broker.bootstrap_servers
        topic = fresh_topic(servers, PARTITIONS)
        produce_all(servers, topic, metric_payloads(EVENTS))
        consume_rounds, landing_rounds, consume_cpu, landing_cpu = [], [], [], []
        pid = broker.running_pid()
        if pid is None:
            raise RuntimeError("the benchmark broker is not running")
        clock = CpuClock(pid)
        for round_ in range(ROUNDS):
            clock.lap()
            consume_rounds.append(consume_only(servers, topic, EVENTS, f"bench-consume-{round_}"))
            consume_cpu.append(clock.lap())
            seconds, landed = landing(servers, topic, Path(folder) / f"landing{round_}.duckdb")
            landing_cpu.append(clock.lap())
            if landed != EVENTS:
                raise RuntimeError(f"landed {landed} of {EVENTS} events")
            landing_rounds.append(seconds)
        naive_seconds = naive(servers, topic, Path(folder) / "naive.duckdb", NAIVE_EVENTS)
    consume_seconds = statistics.median(consume_rounds)
    landing_seconds = statistics.median(landing_rounds)
    consume_eps = EVENTS / consume_seconds
    landing_eps = EVENTS / landing_seconds
    naive_eps = NAIVE_EVENTS / naive_seconds
    cores = os.cpu_count() or 1
    landing_cpu_seconds = statistics.median(landing_cpu)
    # every core busy for the whole landing: the least time it can take on this machine
    landing_floor_seconds = landing_cpu_seconds / cores
    return {
        "name": "kafka-ingest",
        "events": EVENTS,
        "naive_events": NAIVE_EVENTS,
        "consume_only_eps": round(consume_eps),
        "landing_eps": round(landing_eps),
        "naive_eps": round(naive_eps),
        "consume_only_seconds": round(consume_seconds, 3),
        "landing_seconds": round(landing_seconds, 3),
        "naive_seconds": round(naive_seconds, 3),
        "rounds": ROUNDS,
        "consume_only_rounds_seconds": [round(x, 3) for x in consume_rounds],
        "landing_rounds_seconds": [round(x, 3) for x in landing_rounds],
        "consume_only_cpu_seconds": round(statistics.median(consume_cpu), 3),
        "landing_cpu_seconds": round(landing_cpu_seconds, 3),
        "cpu_cores": cores,
        "landing_floor_seconds": round(landing_floor_seconds, 3),
        "ratio_landing_vs_consume_only": round(landing_eps / consume_eps, 3),
        "ratio_landing_floor_vs_consume_only": round(consume_seconds / landing_floor_seconds, 3),
        "ratio_landing_vs_naive": round(landing_eps / naive_eps, 1),
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
