"""A FAKE vLLM OpenAI-compatible server for tests; it is not vLLM and runs no model.

It stays only for what the real server (tests/support/vllm.py, the tests marked `vllm`) cannot
be made to do on demand: malformed bodies, timeouts and slow answers, HTTP 5xx, and a model
whose text is empty, echoes the question or invents an id (`reply`). Everything else — chat,
structured output, adapters loaded, swapped and refused, promotion, a restart, the server
down — is tested against the real one. It answers over real HTTP with the request and response
shapes vLLM documents for ``vllm serve`` (``/health``, ``/v1/models``,
``/v1/chat/completions`` with ``structured_outputs``, and the runtime LoRA routes enabled by
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``); answers are deterministic and every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, None when there was none


def _error(message: str, err_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    """vLLM's current error body (older versions put these fields at the top level)."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _sample(schema: dict[str, Any]) -> Any:
    """A value valid for simple JSON schemas (types, properties, items, enum, const, minimums)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {key: _sample(sub) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [_sample(schema.get("items", {}))] * int(schema.get("minItems", 0))
    if kind == "string":
        return "x" * max(int(schema.get("minLength", 0)), 4)
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return False
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest output should show test failures, not access logs."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fake = self.server.fake
        request = RecordedRequest(
            method, self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        status, payload = fake._handle(request)
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up (a timeout test); nothing to answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeVLLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up on a slow answer are expected in tests; stay quiet."""


class FakeVLLMServer:
    """A FAKE ``vllm serve`` on 127.0.0.1 and a free port, for tests only.

    ``with FakeVLLMServer(base_model="SmolLM2-135M-Instruct") as server: server.url``.
    ``lora_updating=False`` behaves like a server started without
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (the LoRA routes answer FastAPI's 404);
    ``api_key`` makes ``/v1`` routes demand ``Authorization: Bearer KEY`` like ``--api-key``.
    """

    def __init__(
        self,
        base_model: str = "SmolLM2-135M-Instruct",
        *,
        max_model_len: int = 2048,
        api_key: str | None = None,
        lora_updating: bool = True,
    ) -> None:
        self.base_model = base_model
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.lora_updating = lora_updating
        self.loras: dict[str, str] = {}
        self.delay_s = 0.0
        self.reply: str | None = None  # every chat answer, when set: a model misbehaving
        self._fail_next = 0
        self._fail_status = 500
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._created = int(time.time())
        self._http: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeVLLMServer is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FakeVLLMServer:
        self._stopping.clear()
        self._http = _Server(("127.0.0.1", self._port), _Handler)
        self._http.fake = self
        self._port = self._http.server_address[1]
        # A short poll interval keeps stop() (and so each test's teardown) fast.
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.02,), name="fake-vllm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections are refused (the port is kept for a restart)."""
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeVLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests (any route) with ``status`` and vLLM's error body."""
        with self._lock:
            self._fail_next = count
            self._fail_status = status

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    def _handle(self, request: RecordedRequest) -> tuple[int, Any]:
        with self._lock:
            self._requests.append(request)
            failing = self._fail_next > 0
            if failing:
                self._fail_next -= 1
        if self.delay_s:
            self._stopping.wait(self.delay_s)
        if failing:
            return self._fail_status, _error(
                "fake injected failure", "InternalServerError", self._fail_status
            )
        if self.api_key and request.path.startswith("/v1"):
            expected = f"Bearer {self.api_key}"
            if request.headers.get("authorization") != expected:
                return 401, {"error": "Unauthorized"}
        routes = {
            ("GET", "/health"): lambda _body: (200, ""),
            ("GET", "/v1/models"): lambda _body: (200, self._models()),
            ("POST", "/v1/chat/completions"): self._chat,
        }
        if self.lora_updating:
            routes[("POST", "/v1/load_lora_adapter")] = self._load_lora
            routes[("POST", "/v1/unload_lora_adapter")] = self._unload_lora
        route = routes.get((request.method, request.path))
        if route is None:
            return 404, {"detail": "Not Found"}
        body = request.body if isinstance(request.body, dict) else {}
        return route(body)

    def _models(self) -> dict[str, Any]:
        card = {"object": "model", "created": self._created, "owned_by": "vllm"}
        base = {
            **card,
            "id": self.base_model,
            "root": self.base_model,
            "parent": None,
            "max_model_len": self.max_model_len,
        }
        with self._lock:
            loras = dict(self.loras)
        adapters = [
            {**card, "id": name, "root": path, "parent": self.base_model, "max_model_len": None}
            for name, path in loras.items()
        ]
        return {"object": "list", "data": [base, *adapters]}

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body.get("model") or self.base_model
        with self._lock:
            is_lora = model in self.loras
        if model != self.base_model and not is_lora:
            return 404, _error(
                f"The model `{model}` does not exist.", "NotFoundError", 404, param="model"
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, _error("messages must be a non-empty list", "BadRequestError", 400)
        last_user = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        structured = body.get("structured_outputs") or {}
        finish = "stop"
        if structured.get("choice"):
            choices = [str(c) for c in structured["choice"]]
            text = next((c for c in choices if c.lower() in last_user.lower()), choices[0])
        elif "json" in structured:
            schema = structured["json"]
            text = json.dumps(_sample(json.loads(schema) if isinstance(schema, str) else schema))
        else:
            who = f"adapter {model} on {self.base_model}" if is_lora else self.base_model
            text = self.reply if self.reply is not None else f"[{who}] reply to: {last_user}"
            for stop in body.get("stop") or []:
                if stop in text:
                    text = text[: text.index(stop)]
            words = text.split(" ")
            max_tokens = body.get("max_tokens")
            if max_tokens is not None and len(words) > max_tokens:
                text, finish = " ".join(words[:max_tokens]), "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(text.split())
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _load_lora(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return 400, _error(
                "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400
            )
        with self._lock:
            if name in self.loras:
                return 400, _error(
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                    "InvalidUserInput",
                    400,
                )
            if not (Path(path) / "adapter_config.json").is_file():
                return 404, _error(
                    f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404
                )
            self.loras[name] = str(path)
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _unload_lora(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = body.get("lora_name")
        if not name:
            return 400, _error(
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                "InvalidUserInput",
                400,
            )
        with self._lock:
            if name not in self.loras:
                return 404, _error(
                    f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404
                )
            del self.loras[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."
