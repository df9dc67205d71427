"""The Kafka side of a landing: where each partition starts (the warehouse's offsets) and ends,
the bounded fetch from there, and the copy of the offsets in the consumer group that lets the
backlog sensors see the lag without opening DuckDB."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.topics import KafkaUnavailable

FETCH_BATCH = 10_000


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    first: int  # first offset consumed
    next: int  # the offset after the last one consumed
    high_watermark: int

    @property
    def consumed(self) -> int:
        return self.next - self.first


def consumer_for(family: StreamFamily, bootstrap_servers: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": family.consumer_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "socket.timeout.ms": 10_000,
            "log_level": 0,
        }
    )


def plan_ranges(
    consumer: Consumer, family: StreamFamily, start: dict[int, int], timeout: float
) -> list[PartitionRange]:
    """Per partition: from the warehouse's offset (or the log start) to the high watermark."""
    try:
        metadata = consumer.list_topics(family.topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka did not answer for topic {family.topic}: {exc}") from exc
    topic = metadata.topics.get(family.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        raise KafkaUnavailable(f"topic {family.topic} does not exist on the broker")
    ranges = []
    for partition in sorted(topic.partitions):
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(family.topic, partition), timeout=timeout
            )
        except KafkaException as exc:
            raise KafkaUnavailable(f"no watermarks for {family.topic}/{partition}: {exc}") from exc
        first = max(start.get(partition, low), low)
        ranges.append(PartitionRange(partition, first, first, high))
    return ranges


class RangeFetch:
    """Consumes every partition from its first offset to the end of its log, at most
    `max_messages` in all, a fetched batch at a time; afterwards `ends` holds the high
    watermark each partition reported when its end was reached, and `stopped_early` why it
    stopped before, if it did.

    The end is found by fetching (partition EOF), not from ListOffsets: the embedded Tansu
    broker answers ListOffsets with the base offset of the last record batch, which can lie
    below the true end."""

    def __init__(
        self,
        consumer: Consumer,
        family: StreamFamily,
        ranges: list[PartitionRange],
        max_messages: int,
        idle_timeout: float,
    ):
        self.consumer, self.family, self.ranges = consumer, family, ranges
        self.max_messages, self.idle_timeout = max_messages, idle_timeout
        self.ends: dict[int, int] = {}
        self.stopped_early: str | None = None

    def __iter__(self) -> Iterator[list[KafkaMessage]]:
        consumer = self.consumer
        consumer.assign(
            [TopicPartition(self.family.topic, r.partition, r.first) for r in self.ranges]
        )
        fetched = 0
        last_progress = time.monotonic()
        while len(self.ends) < len(self.ranges) and fetched < self.max_messages:
            batch = consumer.consume(min(FETCH_BATCH, self.max_messages - fetched), timeout=0.5)
            if not batch:
                if time.monotonic() - last_progress > self.idle_timeout:
                    self.stopped_early = (
                        f"no answer for {self.idle_timeout:.0f}s (broker unreachable?)"
                    )
                    return
                continue
            last_progress = time.monotonic()
            records = [record for record in batch if record.error() is None]
            if len(records) < len(batch) and not self._handle_errors(batch):
                if records:
                    yield records
                return
            if records:
                fetched += len(records)
                yield records

    def _handle_errors(self, batch: list[KafkaMessage]) -> bool:
        """Note partition ends; False on an error that ends the fetch."""
        for record in batch:
            error = record.error()
            if error is None:
                continue
            if error.code() == KafkaError._PARTITION_EOF:
                self.ends[record.partition()] = record.offset()
            elif error.fatal() or not error.retriable():
                self.stopped_early = f"consumer error: {error.str()}"
                return False
        return True


def commit_to_group(
    consumer: Consumer, family: StreamFamily, next_offsets: dict[int, int]
) -> str | None:
    """Tell the consumer group how far the warehouse got (the warehouse is the truth, the group
    a copy for the sensors); the error text if Kafka refused."""
    if not next_offsets:
        return None
    try:
        consumer.commit(
            offsets=[TopicPartition(family.topic, p, n) for p, n in sorted(next_offsets.items())],
            asynchronous=False,
        )
    except KafkaException as exc:
        return str(exc)
    return None
