"""Feedback on an answer: validated here, published to `llm-feedback`, landed by the streaming
ingestion.

The CLI and the HTTP API only publish: whether the interaction exists is decided where the
event lands (an unknown one is dead-lettered with the reason), so a rating is never lost
because the warehouse was busy. What is refused here is what no landing could fix: a rating
that is neither up nor down, a blank or oversized correction.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import KafkaError, Message, Producer

from dagster_platform.kafka.events import FEEDBACK_EVENTS, FeedbackV1, encode
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)

Rating = Literal["up", "down"]
RATINGS: dict[str, int] = {"up": 1, "down": -1}
MAX_ID_CHARS = 256
MAX_CORRECTION_CHARS = 4000
MAX_COMMENT_CHARS = 2000
DEFAULT_TIMEOUT_S = 10.0


class InvalidFeedback(ValueError):
    """The feedback cannot be sent as given; the message says which field and why."""


def parse_rating(value: str) -> int:
    """`up` → 1, `down` → -1 (any case)."""
    rating = RATINGS.get(value.strip().lower())
    if rating is None:
        raise InvalidFeedback(f"rating must be 'up' or 'down', not {value!r}")
    return rating


def _interaction_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidFeedback("the interaction id is empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidFeedback(
            f"the interaction id is {len(value)} characters long; the limit is {MAX_ID_CHARS}"
        )
    return value


def _text(name: str, value: str | None, limit: int, blank_ok: bool) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        if blank_ok:
            return None
        raise InvalidFeedback(f"the {name} is blank; leave it out or write the better answer")
    if len(value) > limit:
        raise InvalidFeedback(f"the {name} is {len(value)} characters long; the limit is {limit}")
    return value


def build_feedback(
    interaction_id: str,
    rating: str,
    *,
    correction: str | None = None,
    comment: str | None = None,
    user_id: str | None = None,
) -> FeedbackV1:
    """A validated event (InvalidFeedback names the bad field)."""
    return FeedbackV1(
        event_id=uuid.uuid4().hex,
        ts=datetime.now(UTC),
        feedback_id=f"fb-{uuid.uuid4().hex[:12]}",
        interaction_id=_interaction_id(interaction_id),
        rating=parse_rating(rating),
        correction=_text("correction", correction, MAX_CORRECTION_CHARS, blank_ok=False),
        comment=_text("comment", comment, MAX_COMMENT_CHARS, blank_ok=True),
        user_id=_text("user", user_id, MAX_ID_CHARS, blank_ok=True),
    )


class FeedbackPublisher:
    """One producer for many events (the API keeps one per app); thread-safe, as librdkafka
    producers are. Each publish waits for the broker's acknowledgement, so the caller learns
    at once when the feedback did not get through."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = FEEDBACK_EVENTS.topic,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "acks": "all",
                "message.timeout.ms": int(timeout_s * 1000),
                "log_level": 0,  # a down broker is reported to the caller, not on stderr
            }
        )

    def publish(self, event: FeedbackV1) -> FeedbackV1:
        """Send and wait; KafkaUnavailable says why the broker did not take it."""
        delivered = threading.Event()
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                errors.append(error)
            delivered.set()

        try:
            self._producer.produce(
                self.topic,
                key=event.interaction_id.encode(),
                value=encode(event),
                on_delivery=on_delivery,
            )
        except BufferError as exc:
            raise KafkaUnavailable(
                f"feedback not sent: the producer queue is full ({exc})"
            ) from exc
        self._producer.flush(self.timeout_s + 1)
        if not delivered.is_set() or errors:
            why = errors[0].str() if errors else f"no acknowledgement in {self.timeout_s:g} s"
            raise KafkaUnavailable(
                f"Kafka at {self.bootstrap_servers} did not take the feedback on "
                f"{self.topic}: {why}"
            )
        log.info(
            "feedback published",
            extra={
                "feedback_id": event.feedback_id,
                "interaction_id": event.interaction_id,
                "rating": event.rating,
                "topic": self.topic,
            },
        )
        return event

    def close(self) -> None:
        self._producer.flush(self.timeout_s)


def publish_feedback(
    bootstrap_servers: str,
    interaction_id: str,
    rating: str,
    *,
    correction: str | None = None,
    comment: str | None = None,
    user_id: str | None = None,
    topic: str = FEEDBACK_EVENTS.topic,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FeedbackV1:
    """Validate, publish with a producer of its own, and return the event sent."""
    event = build_feedback(
        interaction_id, rating, correction=correction, comment=comment, user_id=user_id
    )
    return FeedbackPublisher(bootstrap_servers, topic, timeout_s).publish(event)
