"""What every benchmark shares: a private broker, a fresh topic, the machine it ran on."""

from __future__ import annotations

import os
import platform
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Producer

from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import HostMetricV1, encode
from dagster_platform.kafka.topics import TopicSpec, ensure_topics


def machine() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "system": platform.system(),
    }


@contextmanager
def private_broker() -> Iterator[EmbeddedBroker]:
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as folder:
        broker = EmbeddedBroker(free_port(), Path(folder))
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


def fresh_topic(bootstrap_servers: str, partitions: int = 3) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap_servers, (TopicSpec(name, partitions, "benchmark"),))
    return name


def metric_payloads(count: int, hosts: int = 40) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of realistic host metric samples, keyed by host."""
    start = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    payloads = []
    for i in range(count):
        host = f"etl-prod-worker-{i % hosts:02d}"
        event = HostMetricV1(
            event_id=f"bench-{i}",
            ts=start + timedelta(seconds=10 * (i // hosts)),
            cluster_id="etl-prod",
            host_id=host,
            cpu_pct=float(40 + i % 55),
            memory_pct=float(50 + i % 40),
            disk_pct=float(30 + i % 60),
            load_1m=float(i % 32),
        )
        payloads.append((host.encode(), encode(event)))
    return payloads


def produce_all(bootstrap_servers: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for key, value in payloads:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("the broker did not take every benchmark message")
