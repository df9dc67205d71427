"""The one interface agents and evaluations call, whatever serves the model.

A backend is the transport (in-process transformers, an in-process vLLM engine, or a vLLM
OpenAI-compatible server); :class:`dagster_platform.llm.client.LLMClient` adds the timeouts,
retries and circuit breaker once, above all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]
BACKENDS = ("transformers", "vllm-server", "vllm-engine")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; greedy by default so answers are reproducible."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One generated answer and what produced it (recorded with every interaction)."""

    text: str
    model: str  # the base model
    adapter: str | None  # the LoRA adapter served, None for the base model
    backend: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str  # "stop", "length" or "time"


@dataclass(frozen=True)
class Choice:
    """A label constrained to a fixed set, with the backend's probabilities when it has them."""

    label: str
    probabilities: dict[str, float] | None
    completion: Completion


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    version: str | None = None
    source: str = ""  # e.g. "mlflow:models:/ops-assistant@champion"
    extra: dict[str, Any] = field(default_factory=dict)


class LLMError(RuntimeError):
    """Base class of every LLM failure; the message says what to do about it."""


class LLMUnavailable(LLMError):
    """The backend could not be reached or did not answer in time (worth retrying)."""


class LLMRequestError(LLMError):
    """The backend refused the request (not worth retrying)."""


class CircuitOpen(LLMUnavailable):
    """Too many consecutive failures: calls fail fast until the breaker half-opens."""


class AdapterLoadError(LLMError):
    """An adapter could not be loaded; the previous one keeps serving."""


class AdapterMissing(LLMRequestError):
    """The backend no longer holds the adapter asked for (a restarted server, or another
    process swapped it out): the registry says what to serve next."""


class BackendNotInstalled(LLMError):
    """A backend whose packages (the `gpu` extra) or hardware are missing here."""


def choice_options(choices: Sequence[str]) -> list[str]:
    """The labels of a constrained choice; every backend refuses an empty set the same way."""
    if not choices:
        raise LLMRequestError("choose needs at least one choice")
    return list(choices)


def choice_token_budget(options: Sequence[str]) -> int:
    """Enough new tokens for the longest label (a token is at least one character)."""
    return max(len(option) for option in options) + 8


def matched_label(text: str, options: Sequence[str]) -> str | None:
    """The label a constrained answer names, tolerating surrounding whitespace."""
    label = text if text in options else text.strip()
    return label if label in options else None


class Backend(Protocol):
    """What each transport implements; adapters are addressed by name once loaded."""

    name: str
    model: str

    def chat(
        self, messages: Sequence[Message], config: GenerationConfig, adapter: str | None
    ) -> Completion: ...

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        config: GenerationConfig,
        adapter: str | None,
    ) -> list[Completion]: ...

    def choose(
        self, messages: Sequence[Message], choices: Sequence[str], adapter: str | None
    ) -> Choice: ...

    def structured(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any],
        config: GenerationConfig,
        adapter: str | None,
    ) -> Completion: ...

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def loaded_adapters(self) -> list[str]: ...

    def health(self) -> None: ...
