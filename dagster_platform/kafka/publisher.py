"""Publishing the simulation: ticks of the cluster model onto Kafka at a wall-clock rate,
scheduled incidents, and the approved commands on ops-actions applied before each tick (a kill
approved in the ontology stops the job here).

Scheduled incidents follow the simulator's clock: on the simulated clock they are counted in
ticks, so the stream stays deterministic; on the wall clock they come every so many real
seconds, whatever the rate."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import msgspec
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from dagster_platform.kafka.events import (
    ACTIONS_TOPIC,
    ActionCommandV1,
)
from dagster_platform.kafka.simulator import ClusterSimulator, Outgoing
from dagster_platform.kafka.topics import ensure_topics, list_topics
from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)

SIMULATOR_GROUP = "dagster-platform-simulator"


@dataclass
class ProduceReport:
    """What one producer run sent: the console command prints it, tests compare it to Kafka."""

    seed: int
    clock: str = "simulated"
    ticks: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # topic → delivered
    events: dict[str, int] = field(default_factory=dict)  # event type → delivered
    incidents: list[dict[str, Any]] = field(default_factory=list)
    incidents_deferred: int = 0  # scheduled cpu-spikes held back while one still burns
    actions_applied: int = 0
    actions_ignored: int = 0
    actions_invalid: int = 0
    delivery_failures: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _actions_consumer(bootstrap_servers: str, timeout: float) -> Consumer:
    """A consumer of ops-actions from the current end, so old commands are not replayed.

    It is assigned concrete offsets, not "end", so a command sent right after the start is not
    lost to a late offset lookup. Some brokers (the embedded Tansu among them) report a high
    watermark inside the last record batch, so older commands are also skipped by timestamp.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": SIMULATOR_GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    metadata = consumer.list_topics(ACTIONS_TOPIC, timeout=timeout)
    assignment = []
    for partition in metadata.topics[ACTIONS_TOPIC].partitions:
        _, high = consumer.get_watermark_offsets(
            TopicPartition(ACTIONS_TOPIC, partition), timeout=timeout
        )
        assignment.append(TopicPartition(ACTIONS_TOPIC, partition, high))
    consumer.assign(assignment)
    return consumer


def _apply_commands(
    consumer: Consumer, simulator: ClusterSimulator, report: ProduceReport, not_before_ms: int
) -> None:
    for message in consumer.consume(num_messages=100, timeout=0):
        if message.error() is not None:
            log.warning("ops-actions consumer error", extra={"error": str(message.error())})
            continue
        kind, timestamp_ms = message.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE and timestamp_ms < not_before_ms:
            continue  # sent before this run started: not meant for this simulation
        try:
            command = msgspec.json.decode(message.value(), type=ActionCommandV1)
        except msgspec.DecodeError as exc:  # ValidationError is one
            report.actions_invalid += 1
            log.warning(
                "invalid action command skipped",
                extra={"offset": message.offset(), "error": str(exc)},
            )
            continue
        if simulator.apply_action(command):
            report.actions_applied += 1
        else:
            report.actions_ignored += 1


def _ticks_between(incident_every: float, rate: float, step: timedelta) -> int:
    """Ticks between incidents on the simulated clock: every `incident_every` wall seconds at
    `rate`, or simulated seconds when running flat out."""
    ticks = incident_every * rate if rate > 0 else incident_every / step.total_seconds()
    return max(1, round(ticks))


def run_producer(
    bootstrap_servers: str,
    simulator: ClusterSimulator,
    *,
    rate: float = 1.0,
    duration: float | None = None,
    ticks: int | None = None,
    incident: str | None = None,
    incident_every: float | None = None,
    cluster: str = "etl-prod",
    stop: threading.Event | None = None,
    connect_timeout: float = 5.0,
) -> ProduceReport:
    """Publish the simulation until `duration` seconds, `ticks` ticks, `stop` or Ctrl-C.

    `rate` is ticks per wall second (0: as fast as possible). `incident` is injected on
    `cluster` at the start, and again (or `cpu-spike`) every `incident_every` seconds (real
    ones on the wall clock; see the module docstring on the simulated clock); a scheduled
    cpu-spike is deferred while the cluster's last runaway job still runs or waits. Approved
    commands on ops-actions are applied before each tick. Raises KafkaUnavailable when the
    broker does not answer, ValueError for a bad option, both before anything is sent.
    """
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    scheduled_kind = incident or "cpu-spike"
    simulator.check_incident(scheduled_kind, cluster)
    wall = simulator.clock == "wall"
    every_ticks = (
        _ticks_between(incident_every, rate, simulator.step)
        if incident_every and not wall
        else None
    )
    every_s = incident_every if incident_every and wall else None
    list_topics(bootstrap_servers, timeout=connect_timeout)
    ensure_topics(bootstrap_servers)
    report = ProduceReport(seed=simulator.seed, clock=simulator.clock)
    sent: Counter[str] = Counter()
    events: Counter[str] = Counter()

    def delivered(event_type: str, err: KafkaError | None, message: Message) -> None:
        if err is not None:
            report.delivery_failures += 1
            log.warning("delivery failed", extra={"topic": message.topic(), "error": str(err)})
        else:
            sent[message.topic()] += 1
            events[event_type] += 1

    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5})
    not_before_ms = int(time.time() * 1000)
    consumer = _actions_consumer(bootstrap_servers, connect_timeout)
    stop = stop or threading.Event()
    started = time.monotonic()
    next_incident = started + every_s if every_s else None
    log.info(
        "simulator producing",
        extra={
            "bootstrap": bootstrap_servers,
            "seed": simulator.seed,
            "rate": rate,
            "clock": simulator.clock,
        },
    )
    try:
        while not stop.is_set() and (ticks is None or report.ticks < ticks):
            if duration is not None and time.monotonic() - started >= duration:
                break
            n = report.ticks
            kind = incident if n == 0 else None
            if n > 0 and every_ticks and n % every_ticks == 0:
                kind = scheduled_kind
            elif every_s and next_incident is not None and time.monotonic() >= next_incident:
                kind = scheduled_kind
                next_incident = time.monotonic() + every_s
            if kind == "cpu-spike" and n > 0 and (burning := simulator.runaway_on(cluster)):
                # one runaway at a time, as on a real cluster: they never end on their own, so
                # stacking them would leave a kill nothing to show for it
                log.info("cpu-spike deferred", extra={"cluster": cluster, "running": burning})
                report.incidents_deferred += 1
                kind = None
            if kind is not None:
                target = simulator.inject_incident(kind, cluster)
                report.incidents.append(
                    {"tick": n, "kind": kind, "cluster": cluster, "target": target}
                )
            _apply_commands(consumer, simulator, report, not_before_ms)
            for out in simulator.tick():
                _produce(producer, out, partial(delivered, out.event.__struct_config__.tag))
            report.ticks += 1
            producer.poll(0)
            if rate > 0:
                stop.wait(max(0.0, started + report.ticks / rate - time.monotonic()))
    except KeyboardInterrupt:
        log.info("simulator interrupted")
    finally:
        report.delivery_failures += producer.flush(30)
        consumer.close()
    report.sent = dict(sorted(sent.items()))
    report.events = dict(sorted(events.items()))
    report.elapsed_s = round(time.monotonic() - started, 3)
    log.info("simulator stopped", extra=report.to_dict())
    return report


def _produce(producer: Producer, out: Outgoing, on_delivery: Any) -> None:
    """Produce, waiting for deliveries when the local queue is full instead of failing."""
    while True:
        try:
            producer.produce(out.topic, out.value, out.key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.5)
