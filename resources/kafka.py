"""Kafka: the embedded broker by default, any cluster through KAFKA_BOOTSTRAP_SERVERS."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from dagster_platform.kafka.decode import DEFAULT_MAX_MESSAGE_BYTES
from dagster_platform.kafka.landing import DEFAULT_MAX_MESSAGES
from dagster_platform.settings import get_settings


class KafkaResource(dg.ConfigurableResource):
    """Where the platform topics live and how much one landing run may take."""

    bootstrap_servers: str | None = Field(
        default=None, description="Overrides KAFKA_BOOTSTRAP_SERVERS / the embedded broker."
    )
    max_messages_per_run: int = Field(
        default=DEFAULT_MAX_MESSAGES, description="Upper bound of one landing batch."
    )
    max_messages_per_tick: int = Field(
        default=20_000,
        ge=1,
        description="Upper bound of a batch the stream sensor lands itself: a tick must end "
        "well inside the sensor timeout, and the rest lands on the next tick.",
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, description="Larger messages are dead-lettered."
    )
    timeout_seconds: float = Field(default=10.0, description="Broker request timeout.")

    @property
    def servers(self) -> str:
        return self.bootstrap_servers or get_settings().bootstrap_servers
