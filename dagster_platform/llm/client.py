"""Timeouts, retries and a circuit breaker, once, above whichever backend serves the model.

Retries (tenacity, exponential backoff with jitter) cover transient failures of one call; the
breaker (pybreaker; seed 003: open after 5 consecutive failures, half-open after 60 s, closed
after 3 successes) stops a dead backend from being hammered and makes callers fail fast with
a clear error instead of waiting out every timeout.
"""

from __future__ import annotations

import contextlib
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
    AdapterMissing,
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
_PROBE = (Message("user", "ok?"),)
_PROBE_CONFIG = GenerationConfig(max_new_tokens=1, temperature=0.0)
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
        self._recover: Callable[[], object] | None = None

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
        """Load the new adapter, check that it answers, and only then switch to it and unload
        the old one, so a failed load keeps the previous adapter serving (the AdapterLoadError
        says why). An adapter the backend lost (a restarted server) is loaded again: what
        serves follows the caller, which reads the registry, not the server's memory."""
        with self._swap_lock:
            previous = self._adapter
            loaded = adapter is None or adapter.name in self.backend.loaded_adapters()
            if adapter == previous and loaded:
                return self.served
            if adapter is not None and not loaded:
                self._call(
                    "load_adapter", lambda: self.backend.load_adapter(adapter.name, adapter.path)
                )
                self._probe(adapter)
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

    def _probe(self, adapter: AdapterInfo) -> None:
        """One token from the freshly loaded adapter; unloaded again when it cannot answer."""
        try:
            self._call("probe", lambda: self.backend.chat(_PROBE, _PROBE_CONFIG, adapter.name))
        except LLMError as exc:
            with contextlib.suppress(LLMError):
                self.backend.unload_adapter(adapter.name)
            raise AdapterLoadError(
                f"adapter {adapter.name} loaded but did not answer: {exc}"
            ) from exc

    def on_adapter_missing(self, recover: Callable[[], object]) -> None:
        """What to do when the backend no longer holds the served adapter (the service
        re-reads the registry); without it, the adapter served is loaded again."""
        self._recover = recover

    def _recovered(self) -> None:
        if self._recover is not None:
            self._recover()
            return
        adapter, self._adapter = self._adapter, None
        self.serve_adapter(adapter)

    @property
    def _adapter_name(self) -> str | None:
        return None if self._adapter is None else self._adapter.name

    # --- the interface -----------------------------------------------------------------------

    def _served_call(self, what: str, fn: Callable[[str | None], T]) -> T:
        """`fn(adapter name)` through the resilience; when the backend has lost the adapter,
        recover once (see :meth:`on_adapter_missing`) and ask again with what serves then."""
        try:
            return self._call(what, lambda: fn(self._adapter_name))
        except AdapterMissing as exc:
            log.warning("llm adapter missing", extra={"call": what, "error": str(exc)})
            self._recovered()
            return self._call(what, lambda: fn(self._adapter_name))

    def chat(
        self, messages: Sequence[Message], config: GenerationConfig | None = None
    ) -> Completion:
        config = config or GenerationConfig()
        return self._served_call("chat", lambda a: self.backend.chat(messages, config, a))

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], config: GenerationConfig | None = None
    ) -> list[Completion]:
        config = config or GenerationConfig()
        return self._served_call(
            "chat_batch", lambda a: self.backend.chat_batch(conversations, config, a)
        )

    def choose(self, messages: Sequence[Message], choices: Sequence[str]) -> Choice:
        choice = self._served_call("choose", lambda a: self.backend.choose(messages, choices, a))
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
        schema = model.model_json_schema()
        completion = self._served_call(
            "structured", lambda a: self.backend.structured(messages, schema, config, a)
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
