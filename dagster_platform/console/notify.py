"""New proposals and their outcomes, posted to a Slack-compatible incoming webhook.

A listener of the action log (`ontology.actions.add_listener`) turns each proposal, execution,
failure and rejection into a message and queues it; one background thread posts the queue in
order, retrying timeouts, connection errors, 429 and 5xx with exponential backoff (tenacity).
So a webhook that hangs or fails never holds up the person approving: the decision is already
in the action log, and the notice follows or is logged as given up. The URL is a credential
(Slack's carry their token in the path): it is never logged, only the step and the error.
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from dagster_platform.lib.logs import get_logger
from dagster_platform.ontology.actions import ActionStatus, add_listener

log = get_logger(__name__)

HEADINGS = {
    "proposed": "New proposal awaiting approval",
    "executed": "Executed",
    "failed": "Failed",
    "rejected": "Rejected",
}
DRAIN_AT_EXIT_S = 10.0


class WebhookError(RuntimeError):
    """The webhook did not take a message; worth another try."""


class WebhookRefused(RuntimeError):
    """The webhook answered 4xx (other than 429): the message is wrong, retrying cannot help."""


def _slack_escape(text: Any) -> str:
    """Slack's mrkdwn control characters as entities, so data never becomes markup."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(status: ActionStatus) -> dict[str, Any]:
    """The incoming-webhook body for an action as it stands: `text` for notifications and
    clients without blocks, `blocks` for the layout."""
    heading = HEADINGS.get(status.status, status.status.capitalize())
    what = f"{status.action_type} on {status.target_type} {status.target_key}"
    detail = status.why if status.status == "proposed" else status.detail
    text = f"{heading}: {what}" + (f" ({detail})" if detail else "")
    decided = "" if status.status == "proposed" else f" · {status.status} by {status.last_actor}"
    fields = [
        ("Action", status.action_type),
        ("Target", f"{status.target_type} {status.target_key}"),
        ("Why", status.why),
        ("Proposed by", status.proposed_by),
    ]
    if status.status != "proposed":
        fields.append(("Outcome", status.detail or status.status))
    if status.status == "failed" and status.retryable:
        fields.append(("Retry", f"dagster-platform actions retry {status.action_id} --by USER"))
    return {
        "text": _slack_escape(text),
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*{_slack_escape(heading)}*: {_slack_escape(what)}",
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"}
                    for name, value in fields
                ],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _slack_escape(f"{status.action_id}{decided}"),
                    }
                ],
            },
        ],
    }


class WebhookNotifier:
    """Posts queued messages to one webhook from a background thread, in order."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        queue_size: int = 1000,
    ):
        self._url = url
        self._client = httpx.Client(timeout=timeout_s)
        self._attempts = attempts
        self._wait = wait_exponential(multiplier=backoff_s, max=max_backoff_s)
        self._queue: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="webhook-notifier", daemon=True)
        self._closed = False
        self._thread.start()
        self._remove = add_listener(self.notify)

    def __repr__(self) -> str:  # never the URL
        return f"WebhookNotifier(queued={self._queue.qsize()})"

    def notify(self, status: ActionStatus) -> None:
        """Queue the notice of an action step; never blocks, never raises."""
        if status.status not in HEADINGS:
            return
        try:
            self._queue.put_nowait((status.action_id, status.status, message(status)))
        except queue.Full:
            log.error(
                "webhook queue full; notice dropped",
                extra={"action_id": status.action_id, "step": status.status},
            )

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._deliver(*item)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _deliver(self, action_id: str, step: str, body: dict[str, Any]) -> None:
        where = {"action_id": action_id, "step": step}

        def retrying(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "webhook post failed; retrying",
                extra={**where, "attempt": state.attempt_number, "error": str(error)},
            )

        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self._attempts),
                wait=self._wait,
                retry=retry_if_exception_type(WebhookError),
                before_sleep=retrying,
                reraise=True,
            ):
                with attempt:
                    self._post(body)
        except WebhookError as exc:
            log.error(
                "webhook post given up",
                extra={**where, "attempts": self._attempts, "error": str(exc)},
            )
            return
        except WebhookRefused as exc:
            log.error("webhook refused the message", extra={**where, "error": str(exc)})
            return
        log.info("webhook posted", extra=where)

    def _post(self, body: dict[str, Any]) -> None:
        try:
            response = self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:  # timeouts and connection errors, without the URL
            raise WebhookError(f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise WebhookError(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise WebhookRefused(f"HTTP {response.status_code}: {response.text[:200]}")

    def close(self, timeout_s: float = DRAIN_AT_EXIT_S) -> None:
        """Stop listening, post what is queued (waiting at most `timeout_s`), stop."""
        if self._closed:
            return
        self._closed = True
        self._remove()
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)
        self._client.close()


_installed: dict[str, WebhookNotifier] = {}
_install_lock = threading.Lock()


def install(url: str | None) -> WebhookNotifier | None:
    """The process's notifier for `url` (the setting `webhook_url`), started once; None when
    no webhook is configured. What is queued at exit is posted for a few seconds more."""
    if not url:
        return None
    with _install_lock:
        if url not in _installed:
            notifier = WebhookNotifier(url)
            atexit.register(notifier.close)
            _installed[url] = notifier
        return _installed[url]


def uninstall(url: str) -> None:
    """Post what the notifier for `url` holds, then stop it (tests; a process ends with exit)."""
    with _install_lock:
        notifier = _installed.pop(url, None)
    if notifier is not None:
        notifier.close()
