"""New alert ids, read from the `ops-alerts` topic by a consumer group of their own.

The incident-report sensor needs each alert once, as soon as it is produced, without opening
the warehouse (sensors never do): it follows the topic with its own group and commits what it
has turned into partitions. Messages that are not alerts are skipped here; the landing
asset dead-letters them with the reason.
"""

from __future__ import annotations

import time

import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition

from dagster_platform.kafka.events import ALERT_EVENTS, AlertV1
from dagster_platform.kafka.topics import KafkaUnavailable

GROUP = "dagster-platform-incident-reports"
_decoder = msgspec.json.Decoder(AlertV1)


class AlertFollower:
    def __init__(self, bootstrap_servers: str, group: str = GROUP, timeout: float = 3.0):
        self.timeout = timeout
        self.bootstrap_servers = bootstrap_servers
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "socket.timeout.ms": int(timeout * 1000),
                "log_level": 0,
            }
        )
        self._positions: dict[int, int] = {}

    def poll(self, max_messages: int = 500) -> list[AlertV1]:
        """Alerts after the group's committed offsets (call `commit` once they are handled)."""
        topic = ALERT_EVENTS.topic
        try:
            metadata = self._consumer.list_topics(topic, timeout=self.timeout)
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise KafkaUnavailable(f"topic {topic} does not exist on {self.bootstrap_servers}")
            partitions = [TopicPartition(topic, p) for p in sorted(found.partitions)]
            committed = self._consumer.committed(partitions, timeout=self.timeout)
            self._consumer.assign(
                [TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in committed]
            )
            messages = self._drain(max_messages)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {self.bootstrap_servers} did not answer: {exc}"
            ) from exc
        alerts = []
        for message in messages:
            if message.error() is not None:
                continue
            self._positions[message.partition()] = message.offset() + 1
            try:
                alerts.append(_decoder.decode(message.value()))
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                continue
        return alerts

    def _drain(self, max_messages: int) -> list:
        """Fetch until a short poll brings nothing more (or `max_messages`, or the timeout)."""
        messages: list = []
        deadline = time.monotonic() + self.timeout
        while len(messages) < max_messages and time.monotonic() < deadline:
            batch = self._consumer.consume(max_messages - len(messages), timeout=0.5)
            if not batch and messages:
                break
            messages += batch
        return messages

    def commit(self) -> None:
        if self._positions:
            offsets = [TopicPartition(ALERT_EVENTS.topic, p, o) for p, o in self._positions.items()]
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self._positions.clear()

    def close(self) -> None:
        self._consumer.close()
