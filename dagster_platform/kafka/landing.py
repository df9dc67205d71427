"""Exactly-once landing of a topic into DuckDB (decision 1 of the design).

A run opens one DuckDB transaction, reads where the warehouse's own rows say each partition
stopped, consumes a bounded batch from there, writes the rows with their (topic, partition,
offset) and the new offsets, commits, and only then commits the offsets to the Kafka consumer
group, so that sensors can see the backlog without opening DuckDB. A run that dies at any point
leaves the next one to start where the warehouse says; two runs at once conflict on the offsets
row and one of them is rolled back. Landing tables carry no key index: the position comes from
the data, and an index on the coordinates would cost as much as the insert itself.

Bad messages are data: every message that is empty, oversized, not JSON, of an unknown type,
against its schema, or that refers to a row the warehouse does not hold (feedback on an unknown
interaction) goes to the dead-letter table with the reason; landed + dead-lettered equals
consumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dagster_platform.kafka.consume import (
    PartitionRange,
    RangeFetch,
    commit_to_group,
    consumer_for,
    plan_ranges,
)
from dagster_platform.kafka.decode import DEFAULT_MAX_MESSAGE_BYTES, Decoder
from dagster_platform.kafka.events import StreamFamily
from dagster_platform.kafka.tables import (
    ensure_tables,
    read_offsets,
)
from dagster_platform.kafka.write import BackgroundWriter, Connect
from dagster_platform.lib.collector import collector_paused
from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)

DEFAULT_MAX_MESSAGES = 100_000


@dataclass
class LandingReport:
    family: str
    topic: str
    consumed: int = 0
    landed: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ranges: list[PartitionRange] = field(default_factory=list)
    remaining_lag: int = 0
    kafka_commit_error: str | None = None
    stopped_early: str | None = None

    @property
    def landed_total(self) -> int:
        return sum(self.landed.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "topic": self.topic,
            "consumed": self.consumed,
            "landed": self.landed,
            "dead_lettered": self.dead_lettered,
            "dead_letter_reasons": self.reasons,
            "offset_ranges": {
                str(r.partition): [r.first, r.next] for r in self.ranges if r.consumed
            },
            "remaining_lag": self.remaining_lag,
            "kafka_commit_error": self.kafka_commit_error,
            "stopped_early": self.stopped_early,
        }


def land_stream(
    connect: Connect,
    bootstrap_servers: str,
    family: StreamFamily,
    *,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    timeout: float = 10.0,
) -> LandingReport:
    """Land up to `max_messages` new messages of `family` exactly once."""
    with connect() as conn:
        ensure_tables(conn, family)
        start = read_offsets(conn, family)
    report = LandingReport(family.name, family.topic)
    decoder = Decoder(family, max_message_bytes)
    consumer = consumer_for(family, bootstrap_servers)
    try:
        planned = plan_ranges(consumer, family, start, timeout)
        fetch = RangeFetch(consumer, family, planned, max_messages, timeout)
        with collector_paused():  # the batches' Message objects, none in a cycle
            # fetch everything first: pausing between fetches to decode makes librdkafka's
            # prefetching stall, and fetching then takes twice as long
            fetched = list(fetch)
            with BackgroundWriter(connect, family, start) as writer:
                while fetched:  # each fetched batch's messages are freed once decoded
                    writer.put(decoder.decode(fetched.pop(0)))
                written = writer.result()
        now_at = written.now_at
        report.consumed = written.consumed
        report.landed = written.landed
        report.dead_lettered = written.dead
        report.reasons = dict(written.reasons)
        report.stopped_early = fetch.stopped_early
        last = written.next_offsets
        report.ranges = [
            PartitionRange(r.partition, r.first, last.get(r.partition, r.first), r.high_watermark)
            for r in planned
        ]
        # mirror every partition the warehouse knows, not only this run's: a run that died
        # between the two commits left the group behind on partitions with nothing new
        report.kafka_commit_error = commit_to_group(consumer, family, now_at)
        report.remaining_lag = _remaining_lag(
            consumer, family, planned, now_at, fetch.ends, timeout
        )
    finally:
        consumer.close()
    log.info("stream landed", extra={"report": report.to_dict()})
    return report


def _remaining_lag(
    consumer: Consumer,
    family: StreamFamily,
    planned: list[PartitionRange],
    now_at: dict[int, int],
    ends: dict[int, int],
    timeout: float,
) -> int:
    """Messages left after this run: from fetched ends where known, else from ListOffsets."""
    lag = 0
    for r in planned:
        high = ends.get(r.partition)
        if high is None:
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(family.topic, r.partition), timeout=timeout, cached=True
                )
            except KafkaException:
                high = r.high_watermark
        lag += max(high - now_at.get(r.partition, r.first), 0)
    return lag
