"""What an approved action does to the world, and proof that it was done.

An effect either returns what the outside systems acknowledged (the command's Kafka offset,
the ResourceManager's answer) or raises :class:`EffectFailed`. Nothing in between: a command
the broker never acknowledged is a failure, because reporting it as executed would let an
operator believe a runaway job was killed while it keeps burning the cluster.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from dagster_platform.kafka.events import ACTIONS_TOPIC, ActionCommandV1, encode
from dagster_platform.lib.logs import get_logger
from dagster_platform.ontology.schema import Effect

log = get_logger(__name__)

EFFECT_TIMEOUT_S = 8.0


class EffectFailed(RuntimeError):
    """The effect was not (or not fully) carried out; `done` holds the parts that were."""

    def __init__(self, message: str, done: dict[str, Any] | None = None):
        super().__init__(message)
        self.done = done or {}


def publish_command(
    command: ActionCommandV1, bootstrap_servers: str, timeout: float = EFFECT_TIMEOUT_S
) -> dict[str, Any]:
    """Publish the command keyed by its target (the key the target's own events carry, so
    they share a partition) and wait for the broker's acknowledgement.

    `message.timeout.ms` is shorter than the flush wait, so a message that was not delivered
    has been given up by the client when this returns and cannot arrive later.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "message.timeout.ms": int(timeout * 1000),
            "socket.timeout.ms": int(min(timeout, 5.0) * 1000),
            "log_level": 0,
        }
    )
    outcome: dict[str, Any] = {}

    def delivered(err: KafkaError | None, message: Message) -> None:
        if err is not None:
            outcome["error"] = err.str()
        else:
            outcome.update(topic=message.topic(), partition=message.partition())
            outcome["offset"] = message.offset()

    producer.produce(
        ACTIONS_TOPIC, encode(command), command.target_id.encode(), on_delivery=delivered
    )
    undelivered = producer.flush(timeout + 2.0)
    if "error" in outcome:
        raise EffectFailed(
            f"command not delivered to {ACTIONS_TOPIC} at {bootstrap_servers}: {outcome['error']}"
        )
    if undelivered or "offset" not in outcome:
        raise EffectFailed(
            f"command not acknowledged by {bootstrap_servers} within {timeout + 2.0:.0f} s"
        )
    return {**outcome, "event_id": command.event_id}


def yarn_kill(
    base_url: str, application_id: str, timeout: float = EFFECT_TIMEOUT_S
) -> dict[str, Any]:
    """Ask the ResourceManager to kill the application (Cluster Application State API).

    YARN answers 202 while the kill is in progress and 200 once the application is KILLED;
    anything else (404 for an unknown application, 403 without permission) is a failure.
    """
    url = (
        f"{base_url.rstrip('/')}/ws/v1/cluster/apps/"
        f"{urllib.parse.quote(application_id, safe='')}/state"
    )
    request = urllib.request.Request(
        url,
        data=json.dumps({"state": "KILLED"}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        raise EffectFailed(
            f"ResourceManager refused PUT {url}: HTTP {exc.code} {_remote_message(exc.read())}"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise EffectFailed(f"ResourceManager at {base_url} did not answer: {exc}") from None
    if status not in (200, 202):
        raise EffectFailed(f"ResourceManager answered PUT {url} with HTTP {status}")
    state = _json(body).get("state")
    return {"url": url, "http_status": status, "state": state}


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _remote_message(body: bytes) -> str:
    """YARN wraps errors as {"RemoteException": {"exception": ..., "message": ...}}."""
    remote = _json(body).get("RemoteException", {})
    if isinstance(remote, dict) and remote.get("message"):
        return f"{remote.get('exception', 'error')}: {remote['message']}"
    return body.decode("utf-8", "replace")[:300]


def run_effect(
    effect: Effect,
    *,
    action_id: str,
    target_key: str,
    target: dict[str, Any],
    requested_by: str,
    approved_by: str,
    bootstrap_servers: str,
    yarn_url: str | None = None,
    timeout: float = EFFECT_TIMEOUT_S,
) -> dict[str, Any]:
    """Carry out the effect on the target object; return what was acknowledged.

    The command goes out first: it is what the watched cluster obeys. A ResourceManager
    failure after it is still a failure (with the command listed in `done`), so a retry
    repeats both, which is safe: a kill of a job already killed is ignored by both.
    """
    command = ActionCommandV1(
        event_id=f"cmd-{uuid.uuid4().hex}",
        ts=datetime.now(UTC),
        action_id=action_id,
        action=effect.command,
        cluster_id=str(target[effect.cluster_property]),
        target_id=target_key,
        requested_by=requested_by,
        approved_by=approved_by,
    )
    result: dict[str, Any] = {"command": publish_command(command, bootstrap_servers, timeout)}
    log.info("action command published", extra={"action_id": action_id, **result["command"]})
    if yarn_url:
        try:
            result["yarn"] = yarn_kill(yarn_url, target_key, timeout)
        except EffectFailed as exc:
            raise EffectFailed(str(exc), done=result) from None
        log.info("yarn kill requested", extra={"action_id": action_id, **result["yarn"]})
    return result
