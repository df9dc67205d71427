"""The platform's topics and their layout, created idempotently on any Kafka-compatible broker."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic

from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str


PLATFORM_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("raw-data-stream", 3, "host metric samples and Spark job lifecycle events"),
    TopicSpec("ops-alerts", 1, "alerts raised on the watched clusters"),
    TopicSpec("llm-feedback", 1, "ratings people give to answers"),
    TopicSpec("ops-actions", 1, "approved action commands, e.g. kill a Spark job"),
)


class KafkaUnavailable(RuntimeError):
    """The broker did not answer in time."""


def admin_client(bootstrap_servers: str) -> AdminClient:
    """An admin client that stays quiet while a broker is down (callers report that themselves)."""
    return AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 5000, "log_level": 0}
    )


def list_topics(bootstrap_servers: str, timeout: float = 5.0) -> dict[str, int]:
    """Topic name → partition count; raises KafkaUnavailable when the broker does not answer."""
    try:
        metadata = admin_client(bootstrap_servers).list_topics(timeout=timeout)
    except Exception as exc:  # confluent-kafka raises KafkaException with a transport error
        raise KafkaUnavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def ensure_topics(
    bootstrap_servers: str,
    topics: tuple[TopicSpec, ...] = PLATFORM_TOPICS,
    timeout: float = 10.0,
) -> list[str]:
    """Create the topics that are missing; return the names created."""
    existing = list_topics(bootstrap_servers, timeout=timeout)
    missing = [t for t in topics if t.name not in existing]
    if not missing:
        return []
    admin = admin_client(bootstrap_servers)  # must outlive the futures it returns
    futures = admin.create_topics(
        [NewTopic(t.name, num_partitions=t.partitions, replication_factor=1) for t in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KafkaUnavailable(f"could not create topic {name}: {exc}") from exc
        else:
            created.append(name)
    log.info("topics created", extra={"topics": created, "bootstrap": bootstrap_servers})
    return created
