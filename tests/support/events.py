"""Stream events for the real broker: host-metric samples and a producer that flushes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from confluent_kafka import Producer

from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.events import HostMetricV1, encode

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # the first sample's minute


def samples(n_minutes: int, hosts: int = 4, cpu: float = 50.0) -> list[bytes]:
    events = []
    for minute in range(n_minutes):
        for h in range(hosts):
            events.append(
                encode(
                    HostMetricV1(
                        event_id=uuid.uuid4().hex,
                        ts=T0 + timedelta(minutes=minute, seconds=h),
                        cluster_id="etl-prod",
                        host_id=f"etl-prod-worker-{h:02d}",
                        cpu_pct=cpu + h,
                        memory_pct=60.0,
                        disk_pct=70.0,
                    )
                )
            )
    return events


def produce(broker: EmbeddedBroker, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 5})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(10) == 0
