"""Timeouts, retries and a circuit breaker, once, above whichever backend serves the model.

Retries (tenacity, exponential backoff with jitter) cover transient failures of one call; the
breaker (pybreaker; seed 003: open after 5 consecutive failures, half-open after 60 s, closed
after 3 successes) stops a dead backend from being hammered and makes callers fail fast with
a clear error instead of waiting out every timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
from pydantic import BaseModel, ValidationError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dagster_platform.lib.logs import get_logger
from dagster_platform.llm.base import (
    AdapterInfo,
    AdapterLoadError,
    Backend,
    Choice,
    CircuitOpen,
    Completion,
    GenerationConfig,
    LLMError,
    LLMRequestError,
    LLMUnavailable,
    Message,
)

log = get_logger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ResiliencePolicy:
    timeout_s: float = 60.0
    retries: int = 2  # attempts after the first
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    breaker_fail_max: int = 5
    breaker_reset_s: float = 60.0
    breaker_success_threshold: int = 3


class StructuredOutputError(LLMError):
    """The model's answer is not valid for the requested schema; `text` is what it said."""

    def __init__(self, message: str, text: str, completion: Completion):
        super().__init__(message)
        self.text = text
        self.completion = completion


@dataclass(frozen=True)
class Served:
    """What answers right now: the base model and the adapter on top (None: the base model)."""

    backend: str
    model: str
    adapter: AdapterInfo | None

    @property
    def label(self) -> str:
        if self.adapter is None:
            return f"{self.model} (base model)"
        version = f" v{self.adapter.version}" if self.adapter.version else ""
        return f"{self.model} + {self.adapter.name}{version}"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, LLMUnavailable) and not isinstance(exc, CircuitOpen)


class LLMClient:
    """The resilient front of one backend; also owns which adapter is served."""

    def __init__(self, backend: Backend, policy: ResiliencePolicy | None = None):
        self.backend = backend
        self.policy = policy or ResiliencePolicy()
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=self.policy.breaker_fail_max,
            reset_timeout=self.policy.breaker_reset_s,
            success_threshold=self.policy.breaker_success_threshold,
            exclude=[LLMRequestError, StructuredOutputError, AdapterLoadError],
            name=f"llm-{backend.name}",
        )
        self._adapter: AdapterInfo | None = None
        self._swap_lock = threading.Lock()
        self._last_failure: str | None = None

    # --- resilience --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.retries + 1),
            wait=wait_exponential_jitter(
                initial=self.policy.backoff_initial_s, max=self.policy.backoff_max_s
            ),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        return retrying(self._guarded, what, fn)

    def _guarded(self, what: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return fn()
            except LLMError as exc:
                self._last_failure = str(exc)
                raise

        try:
            return self.breaker.call(attempt)
        except pybreaker.CircuitBreakerError as exc:
            detail = f"; last error: {self._last_failure}" if self._last_failure else ""
            message = (
                f"the LLM backend {self.backend.name} is failing: circuit open after "
                f"{self.policy.breaker_fail_max} consecutive failures, next try in "
                f"{self.policy.breaker_reset_s:g} s{detail}"
            )
            raise CircuitOpen(message) from exc
        except LLMError as exc:
            log.warning(
                "llm call failed",
                extra={"backend": self.backend.name, "call": what, "error": str(exc)},
            )
            raise

    @property
    def breaker_state(self) -> str:
        return str(self.breaker.current_state)

    # --- serving -----------------------------------------------------------------------------

    @property
    def served(self) -> Served:
        try:
            model = self.backend.model  # a vLLM server's model is discovered on first use
        except LLMError:
            model = "(unreachable)"
        return Served(self.backend.name, model, self._adapter)

    def serve_adapter(self, adapter: AdapterInfo | None) -> Served:
        """Load the new adapter first and only then unload the old one, so a failed load
        keeps the previous adapter serving (the AdapterLoadError says why)."""
        with self._swap_lock:
            previous = self._adapter
            if adapter == previous:
                return self.served
            if adapter is not None and adapter.name not in self.backend.loaded_adapters():
                self._call(
                    "load_adapter", lambda: self.backend.load_adapter(adapter.name, adapter.path)
                )
            self._adapter = adapter
            if previous is not None and (adapter is None or previous.name != adapter.name):
                try:
                    self.backend.unload_adapter(previous.name)
                except LLMError as exc:  # the new one serves already; the old one only costs memory
                    log.warning(
                        "old adapter not unloaded",
                        extra={"adapter": previous.name, "error": str(exc)},
                    )
            log.info("llm serving", extra={"served": self.served.label})
            return self.served

    @property
    def _adapter_name(self) -> str | None:
        return None if self._adapter is None else self._adapter.name

    # --- the interface -----------------------------------------------------------------------

    def chat(
        self, messages: Sequence[Message], config: GenerationConfig | None = None
    ) -> Completion:
        config = config or GenerationConfig()
        adapter = self._adapter_name
        return self._call("chat", lambda: self.backend.chat(messages, config, adapter))

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], config: GenerationConfig | None = None
    ) -> list[Completion]:
        config = config or GenerationConfig()
        adapter = self._adapter_name
        return self._call(
            "chat_batch", lambda: self.backend.chat_batch(conversations, config, adapter)
        )

    def choose(self, messages: Sequence[Message], choices: Sequence[str]) -> Choice:
        adapter = self._adapter_name
        choice = self._call("choose", lambda: self.backend.choose(messages, choices, adapter))
        if choice.label not in choices:
            raise LLMRequestError(f"the model answered {choice.label!r}, not one of {choices}")
        return choice

    def structured(
        self,
        messages: Sequence[Message],
        model: type[M],
        config: GenerationConfig | None = None,
    ) -> tuple[M, Completion]:
        """An answer validated against `model`'s schema; StructuredOutputError when it is not."""
        config = config or GenerationConfig()
        adapter = self._adapter_name
        schema = model.model_json_schema()
        completion = self._call(
            "structured", lambda: self.backend.structured(messages, schema, config, adapter)
        )
        try:
            return model.model_validate_json(completion.text), completion
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()[:3]
            )
            raise StructuredOutputError(
                f"the answer does not follow {model.__name__}: {problems}",
                completion.text,
                completion,
            ) from exc

    def health(self) -> dict[str, Any]:
        self._call("health", self.backend.health)
        return {"backend": self.backend.name, "served": self.served.label}
