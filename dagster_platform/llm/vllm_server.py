"""Backend for a vLLM OpenAI-compatible HTTP server (``vllm serve``).

The server owns the GPU and batches concurrent requests itself, so this backend stays a thin
HTTP client: one attempt per call, failures mapped onto the errors of
:mod:`dagster_platform.llm.base` so the client layer above can decide what to retry.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from dagster_platform.llm.base import (
    AdapterLoadError,
    AdapterMissing,
    Choice,
    Completion,
    GenerationConfig,
    LLMRequestError,
    LLMUnavailable,
    Message,
    choice_options,
    choice_token_budget,
    matched_label,
)

_BATCH_WORKERS = 8
_LORA_SETUP_HINT = (
    "the server must run with --enable-lora and the environment variable "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
)


def _normalise_root(base_url: str) -> str:
    """Accept ``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1``."""
    root = base_url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    if not root.startswith(("http://", "https://")):
        raise ValueError(f"vLLM base_url must start with http:// or https://, got {base_url!r}")
    return root


def _error_message(response: httpx.Response) -> str:
    """vLLM's message from either error shape, else the raw body (trimmed)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:  # e.g. {"error": "Unauthorized"} for a bad API key
            return error
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):  # FastAPI's own shape, e.g. a route the server does not expose
            return str(body["detail"])
    return response.text.strip()[:500]


def adapter_rank(path: Path) -> int | None:
    """The largest LoRA rank of a peft folder (`r` and any per-module `rank_pattern`), or None
    when its config cannot be read (the server then judges)."""
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    found = [int(rank) for rank in ranks if isinstance(rank, int | float)]
    return max(found) if found else None


def _sampling(config: GenerationConfig) -> dict[str, Any]:
    """The OpenAI sampling fields of a generation config."""
    return {
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "stop": config.stop,
        "seed": config.seed,
    }


class VLLMServerBackend:
    """Talks to ``vllm serve`` over HTTP; adapters are addressed as served model names.

    Runtime adapter loading (:meth:`load_adapter`) needs the server started with
    ``--enable-lora`` and the environment variable ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``;
    without them vLLM does not expose ``/v1/load_lora_adapter``.
    """

    name = "vllm-server"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        timeout_s: float = 30.0,
        api_key: str | None = None,
        max_lora_rank: int | None = None,
    ) -> None:
        self.base_url = _normalise_root(base_url)
        self.timeout_s = timeout_s
        self.max_lora_rank = max_lora_rank
        self._model = model
        self._model_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def __repr__(self) -> str:
        return f"VLLMServerBackend(base_url={self.base_url!r}, model={self._model!r})"

    @property
    def model(self) -> str:
        """The served base model id, discovered from ``/v1/models`` on first use if not given."""
        return self._resolve_model()

    def _resolve_model(self) -> str:
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._discover_model()
        return self._model

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLLMServerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One attempt; transport failures (refused, reset, timeout) are retryable."""
        url = self._url(path)
        try:
            return self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(
                f"vLLM server {method} {url} timed out after {self.timeout_s:g}s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise LLMUnavailable(
                f"vLLM server {method} {url} unreachable ({type(exc).__name__}: {exc}); "
                f"is `vllm serve` running at {self.base_url}?"
            ) from exc

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """:meth:`_send`, then HTTP 5xx/429 are retryable and other 4xx are not."""
        response = self._send(method, path, body)
        status = response.status_code
        if status >= 500 or status == 429:
            raise LLMUnavailable(
                f"vLLM server {method} {self._url(path)} answered HTTP {status}: "
                f"{_error_message(response)}"
            )
        if status == 404 and body is not None and body.get("model"):
            message = _error_message(response)
            if "does not exist" in message:  # an adapter the server no longer holds
                raise AdapterMissing(
                    f"vLLM server {method} {self._url(path)} answered HTTP 404, it does not "
                    f"serve {body['model']!r}: {message}"
                )
        if status >= 400:
            raise LLMRequestError(
                f"vLLM server {method} {self._url(path)} refused the request with HTTP "
                f"{status}: {_error_message(response)}"
            )
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise LLMRequestError(
                f"vLLM server {response.request.url} answered a body that is not JSON: "
                f"{response.text[:200]!r}"
            ) from exc
        if not isinstance(body, dict):
            raise LLMRequestError(f"vLLM server {response.request.url} answered {body!r}")
        return body

    def _models(self) -> list[dict[str, Any]]:
        body = self._json(self._request("GET", "/v1/models"))
        data = body.get("data")
        if not isinstance(data, list):
            raise LLMRequestError(f"vLLM server {self._url('/v1/models')} answered no model list")
        return [entry for entry in data if isinstance(entry, dict)]

    def _discover_model(self) -> str:
        for entry in self._models():
            if entry.get("parent") is None and entry.get("id"):
                return str(entry["id"])
        raise LLMRequestError(f"vLLM server {self._url('/v1/models')} lists no base model")

    def _complete(
        self,
        messages: Sequence[Message],
        adapter: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        structured_outputs: dict[str, Any] | None = None,
    ) -> Completion:
        base_model = self._resolve_model()
        body: dict[str, Any] = {
            "model": adapter or base_model,
            "messages": [message.to_dict() for message in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if structured_outputs is not None:
            body["structured_outputs"] = structured_outputs
        started = time.perf_counter()
        answer = self._json(self._request("POST", "/v1/chat/completions", body))
        latency = time.perf_counter() - started
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMRequestError(
                f"vLLM server {self._url('/v1/chat/completions')} answered without "
                f"choices[0].message.content: {answer!r:.300}"
            ) from exc
        usage = answer.get("usage") or {}
        return Completion(
            text=text,
            model=base_model,
            adapter=adapter,
            backend=self.name,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency,
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )

    def chat(
        self, messages: Sequence[Message], config: GenerationConfig, adapter: str | None
    ) -> Completion:
        return self._complete(messages, adapter, **_sampling(config))

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        config: GenerationConfig,
        adapter: str | None,
    ) -> list[Completion]:
        """Concurrent requests: vLLM batches them server-side; results keep input order."""
        if not conversations:
            return []
        self._resolve_model()  # discover once, not once per thread if it fails
        workers = min(_BATCH_WORKERS, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vllm-batch") as pool:
            futures = [pool.submit(self.chat, c, config, adapter) for c in conversations]
            return [future.result() for future in futures]

    def choose(
        self, messages: Sequence[Message], choices: Sequence[str], adapter: str | None
    ) -> Choice:
        options = choice_options(choices)
        completion = self._complete(
            messages,
            adapter,
            max_tokens=choice_token_budget(options),
            temperature=0.0,
            structured_outputs={"choice": options},
        )
        label = matched_label(completion.text, options)
        if label is None:
            raise LLMRequestError(
                f"vLLM server {self._url('/v1/chat/completions')} answered {completion.text!r}, "
                f"not one of {options}; servers older than vLLM 0.11 ignore the "
                "structured_outputs field"
            )
        return Choice(label=label, probabilities=None, completion=completion)

    def structured(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any],
        config: GenerationConfig,
        adapter: str | None,
    ) -> Completion:
        return self._complete(
            messages, adapter, **_sampling(config), structured_outputs={"json": schema}
        )

    def load_adapter(self, name: str, path: Path) -> None:
        """Register a LoRA adapter directory (a path on the server's machine) as ``name``;
        an adapter above the server's ``--max-lora-rank`` is refused before it is sent."""
        url = self._url("/v1/load_lora_adapter")
        rank = adapter_rank(path)
        if self.max_lora_rank is not None and rank is not None and rank > self.max_lora_rank:
            raise AdapterLoadError(
                f"adapter {name!r} has LoRA rank {rank}, above the vLLM server's "
                f"--max-lora-rank {self.max_lora_rank}: train it with lora_r <= "
                f"{self.max_lora_rank}, or restart the server with VLLM_MAX_LORA_RANK >= {rank}"
            )
        try:
            response = self._send(
                "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}
            )
        except LLMUnavailable as exc:
            raise AdapterLoadError(f"loading adapter {name!r} from {path}: {exc}") from exc
        if response.status_code >= 400:
            message = _error_message(response)
            # A bare FastAPI 404/405 means the route itself is missing, not the adapter.
            route_missing = message in ("Not Found", "Method Not Allowed")
            hint = f" ({_LORA_SETUP_HINT})" if route_missing else ""
            raise AdapterLoadError(
                f"vLLM server {url} could not load adapter {name!r} from {path}: "
                f"HTTP {response.status_code}: {message}{hint}"
            )

    def unload_adapter(self, name: str) -> None:
        try:
            self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        except LLMRequestError as exc:
            raise AdapterLoadError(f"unloading adapter {name!r}: {exc}") from exc

    def loaded_adapters(self) -> list[str]:
        return [
            str(entry["id"])
            for entry in self._models()
            if entry.get("parent") is not None and entry.get("id")
        ]

    def health(self) -> None:
        response = self._send("GET", "/health")
        if response.status_code != 200:
            raise LLMUnavailable(
                f"vLLM server {self._url('/health')} is not healthy: HTTP "
                f"{response.status_code}: {_error_message(response)}"
            )
