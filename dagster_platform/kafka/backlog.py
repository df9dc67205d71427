"""How much is waiting on a topic for its consumer group, asked of Kafka alone.

Sensors call this every few seconds, so it must be cheap and must never open the warehouse:
it compares each partition's high watermark with the offset the landing run committed to the
consumer group after its DuckDB transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.topics import KafkaUnavailable


@dataclass(frozen=True)
class Backlog:
    topic: str
    # partition → (committed offset or None, high watermark)
    partitions: dict[int, tuple[int | None, int]]

    @property
    def waiting(self) -> int:
        return sum(max(high - (committed or 0), 0) for committed, high in self.partitions.values())

    def describe(self) -> str:
        parts = ", ".join(
            f"p{p}: {'-' if c is None else c}/{h}" for p, (c, h) in sorted(self.partitions.items())
        )
        return f"{self.topic} committed/high {parts}"


def backlog(bootstrap_servers: str, family: StreamFamily, timeout: float = 3.0) -> Backlog:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": family.consumer_group,
            "enable.auto.commit": False,
            "socket.timeout.ms": int(timeout * 1000),
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(family.topic, timeout=timeout)
        topic = metadata.topics.get(family.topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailable(f"topic {family.topic} does not exist on {bootstrap_servers}")
        partitions = [TopicPartition(family.topic, p) for p in sorted(topic.partitions)]
        committed = consumer.committed(partitions, timeout=timeout)
        result = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(family.topic, tp.partition), timeout=timeout, cached=False
            )
            result[tp.partition] = (tp.offset if tp.offset >= 0 else None, high)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from exc
    finally:
        consumer.close()
    return Backlog(family.topic, result)
