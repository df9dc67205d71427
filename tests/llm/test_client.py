"""Retries, the circuit breaker and adapter swaps of the client, over a scripted backend.

`ScriptedBackend` is a test double for the transport (it fails when told to); the real
backends have their own tests. The policy under test is the client's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from dagster_platform.llm.base import (
    AdapterInfo,
    AdapterLoadError,
    Choice,
    CircuitOpen,
    Completion,
    GenerationConfig,
    LLMRequestError,
    LLMUnavailable,
    Message,
)
from dagster_platform.llm.client import LLMClient, ResiliencePolicy, StructuredOutputError

HELLO = [Message("user", "hello")]


class ScriptedBackend:
    name = "scripted"
    model = "base-model"

    def __init__(self) -> None:
        self.fail_next = 0
        self.failure: Exception = LLMUnavailable("connection refused")
        self.calls = 0
        self.answer = "hi"
        self.adapters: list[str] = []
        self.refuse_adapter: str | None = None

    def _attempt(self) -> None:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise self.failure

    def _completion(self, adapter: str | None) -> Completion:
        return Completion(self.answer, self.model, adapter, self.name, 1, 1, 0.0, "stop")

    def chat(self, messages: Sequence[Message], config: GenerationConfig, adapter: str | None):
        self._attempt()
        return self._completion(adapter)

    def chat_batch(self, conversations, config, adapter):
        self._attempt()
        return [self._completion(adapter) for _ in conversations]

    def choose(self, messages, choices, adapter):
        self._attempt()
        return Choice(self.answer, None, self._completion(adapter))

    def structured(self, messages, schema, config, adapter):
        self._attempt()
        return self._completion(adapter)

    def load_adapter(self, name: str, path: Path) -> None:
        if name == self.refuse_adapter:
            raise AdapterLoadError(f"{name} is corrupt")
        self.adapters.append(name)

    def unload_adapter(self, name: str) -> None:
        self.adapters.remove(name)

    def loaded_adapters(self) -> list[str]:
        return list(self.adapters)

    def health(self) -> None:
        self._attempt()


FAST = ResiliencePolicy(
    retries=2,
    backoff_initial_s=0.001,
    backoff_max_s=0.002,
    breaker_fail_max=5,
    breaker_reset_s=0.2,
    breaker_success_threshold=3,
)


def test_transient_failures_are_retried_with_backoff() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, FAST)
    backend.fail_next = 2
    assert client.chat(HELLO).text == "hi"
    assert backend.calls == 3
    assert client.breaker_state == "closed"


def test_a_refused_request_is_not_retried_and_does_not_trip_the_breaker() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, FAST)
    backend.failure = LLMRequestError("context too long")
    for _ in range(7):
        backend.fail_next = 1
        with pytest.raises(LLMRequestError, match="context too long"):
            client.chat(HELLO)
    assert backend.calls == 7
    assert client.breaker_state == "closed"


def test_breaker_opens_after_five_failures_half_opens_and_closes_after_three_successes() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, ResiliencePolicy(**{**FAST.__dict__, "retries": 0}))
    backend.fail_next = 100
    for _ in range(4):
        with pytest.raises(LLMUnavailable, match="connection refused"):
            client.chat(HELLO)
    with pytest.raises(CircuitOpen, match="circuit open after 5 consecutive failures"):
        client.chat(HELLO)
    calls = backend.calls
    with pytest.raises(CircuitOpen, match="connection refused"):  # fails fast, names the cause
        client.chat(HELLO)
    assert backend.calls == calls  # the backend was not called while open

    time.sleep(0.25)
    backend.fail_next = 0
    assert client.chat(HELLO).text == "hi"  # the trial call goes through
    assert client.breaker_state == "half-open"
    client.chat(HELLO)
    client.chat(HELLO)
    assert client.breaker_state == "closed"


def test_a_failed_trial_call_opens_the_breaker_again() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, ResiliencePolicy(**{**FAST.__dict__, "retries": 0}))
    backend.fail_next = 100
    for _ in range(5):
        with pytest.raises(LLMUnavailable):
            client.chat(HELLO)
    time.sleep(0.25)
    with pytest.raises(CircuitOpen):
        client.chat(HELLO)
    assert client.breaker_state == "open"


def test_retries_stop_when_the_breaker_opens() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, ResiliencePolicy(**{**FAST.__dict__, "retries": 10}))
    backend.fail_next = 100
    with pytest.raises(CircuitOpen):
        client.chat(HELLO)
    assert backend.calls == 5


class Route(BaseModel):
    route: str
    confidence: float


def test_structured_answers_are_validated() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, FAST)
    backend.answer = '{"route": "data", "confidence": 0.9}'
    parsed, completion = client.structured(HELLO, Route)
    assert completion.backend == "scripted"
    assert parsed == Route(route="data", confidence=0.9)
    backend.answer = '{"route": "data"}'
    with pytest.raises(StructuredOutputError, match="confidence: Field required") as caught:
        client.structured(HELLO, Route)
    assert caught.value.text == '{"route": "data"}'
    assert client.breaker_state == "closed"


def test_choose_refuses_an_answer_outside_the_choices() -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, FAST)
    backend.answer = "maybe"
    with pytest.raises(LLMRequestError, match="not one of"):
        client.choose(HELLO, ["infra", "data"])


def test_adapter_swap_loads_the_new_one_before_unloading_the_old(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    client = LLMClient(backend, FAST)
    v1 = AdapterInfo("ops-v1", tmp_path, "1")
    v2 = AdapterInfo("ops-v2", tmp_path, "2")
    assert client.serve_adapter(v1).label == "base-model + ops-v1 v1"
    assert client.chat(HELLO).adapter == "ops-v1"
    client.serve_adapter(v2)
    assert backend.adapters == ["ops-v2"]
    assert client.chat(HELLO).adapter == "ops-v2"

    backend.refuse_adapter = "ops-v3"
    with pytest.raises(AdapterLoadError, match="corrupt"):
        client.serve_adapter(AdapterInfo("ops-v3", tmp_path, "3"))
    assert client.served.adapter == v2  # the previous adapter keeps serving
    assert client.chat(HELLO).adapter == "ops-v2"

    client.serve_adapter(None)
    assert backend.adapters == [] and client.chat(HELLO).adapter is None
    assert client.served.label == "base-model (base model)"
