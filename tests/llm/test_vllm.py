"""The vLLM backends: the server backend over real HTTP against a FAKE vLLM server, and the
engine backend's refusal (and its mapping onto a fake ``vllm`` module) on a machine without a GPU.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagster_platform.llm import vllm_engine
from dagster_platform.llm.base import (
    AdapterLoadError,
    AdapterMissing,
    BackendNotInstalled,
    GenerationConfig,
    LLMRequestError,
    LLMUnavailable,
    Message,
)
from dagster_platform.llm.vllm_engine import VLLMEngineBackend
from dagster_platform.llm.vllm_server import VLLMServerBackend
from tests.support.fake_vllm import FakeVLLMServer

BASE = "SmolLM2-135M-Instruct"
CONFIG = GenerationConfig(max_new_tokens=64, seed=7, stop=("STOP",))


def ask(text: str) -> list[Message]:
    return [Message("system", "You are terse."), Message("user", text)]


def make_adapter(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    return path


@pytest.fixture
def server() -> Iterator[FakeVLLMServer]:
    with FakeVLLMServer(base_model=BASE) as fake:
        yield fake


@pytest.fixture
def backend(server: FakeVLLMServer) -> Iterator[VLLMServerBackend]:
    client = VLLMServerBackend(server.url, timeout_s=2.0)
    yield client
    client.close()


def chat_bodies(server: FakeVLLMServer) -> list[dict[str, Any]]:
    return [request.body for request in server.requests_to("/v1/chat/completions")]


def test_discovers_the_base_model_lazily_and_accepts_a_v1_url(server: FakeVLLMServer) -> None:
    backend = VLLMServerBackend(server.url + "/v1/")
    assert server.requests == []
    assert backend.base_url == server.url
    assert backend.model == BASE
    assert [r.path for r in server.requests] == ["/v1/models"]
    backend.health()
    backend.close()


def test_chat_with_the_base_model(backend: VLLMServerBackend, server: FakeVLLMServer) -> None:
    completion = backend.chat(ask("status of pump 3?"), CONFIG, None)
    assert completion.text == f"[{BASE}] reply to: status of pump 3?"
    assert (completion.model, completion.adapter, completion.backend) == (
        BASE,
        None,
        "vllm-server",
    )
    assert completion.finish_reason == "stop"
    assert completion.prompt_tokens == 7 and completion.completion_tokens == 7
    assert completion.latency_s > 0
    (body,) = chat_bodies(server)
    assert body["model"] == BASE
    assert body["messages"] == [m.to_dict() for m in ask("status of pump 3?")]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (64, 0.0, 1.0)
    assert (body["stop"], body["seed"]) == (["STOP"], 7)
    assert "structured_outputs" not in body


def test_chat_reports_a_length_finish(backend: VLLMServerBackend) -> None:
    completion = backend.chat(ask("a b c d e f"), GenerationConfig(max_new_tokens=3), None)
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 3


def test_adapters_load_serve_and_unload(
    backend: VLLMServerBackend, server: FakeVLLMServer, tmp_path: Path
) -> None:
    path = make_adapter(tmp_path, "ops-v1")
    assert backend.loaded_adapters() == []
    backend.load_adapter("ops", path)
    assert server.requests_to("/v1/load_lora_adapter")[0].body == {
        "lora_name": "ops",
        "lora_path": str(path),
    }
    assert backend.loaded_adapters() == ["ops"]

    completion = backend.chat(ask("hello"), CONFIG, "ops")
    assert completion.adapter == "ops" and completion.model == BASE
    assert completion.text.startswith(f"[adapter ops on {BASE}]")
    assert chat_bodies(server)[-1]["model"] == "ops"

    backend.unload_adapter("ops")
    assert server.requests_to("/v1/unload_lora_adapter")[0].body == {"lora_name": "ops"}
    assert backend.loaded_adapters() == []
    with pytest.raises(AdapterLoadError, match="cannot be found"):
        backend.unload_adapter("ops")


def test_adapter_load_errors_carry_the_servers_message(
    backend: VLLMServerBackend, tmp_path: Path
) -> None:
    with pytest.raises(AdapterLoadError, match=r"No adapter found for .*empty") as missing:
        backend.load_adapter("ops", tmp_path / "empty")
    assert "/v1/load_lora_adapter" in str(missing.value)

    backend.load_adapter("ops", make_adapter(tmp_path, "ops-v1"))
    with pytest.raises(AdapterLoadError, match="has already been loaded"):
        backend.load_adapter("ops", make_adapter(tmp_path, "ops-v2"))


def test_adapter_load_without_runtime_updating_explains_the_setup(tmp_path: Path) -> None:
    with (
        FakeVLLMServer(base_model=BASE, lora_updating=False) as server,
        VLLMServerBackend(server.url) as backend,
        pytest.raises(AdapterLoadError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"),
    ):
        backend.load_adapter("ops", make_adapter(tmp_path, "ops-v1"))


def test_chat_batch_keeps_input_order(backend: VLLMServerBackend, server: FakeVLLMServer) -> None:
    questions = [f"question {i}" for i in range(12)]
    completions = backend.chat_batch([ask(q) for q in questions], CONFIG, None)
    assert [c.text for c in completions] == [f"[{BASE}] reply to: {q}" for q in questions]
    assert len(chat_bodies(server)) == 12
    assert backend.chat_batch([], CONFIG, None) == []


def test_choose_sends_structured_outputs_choice(
    backend: VLLMServerBackend, server: FakeVLLMServer
) -> None:
    choice = backend.choose(ask("route this to the billing team"), ["ops", "billing"], None)
    assert choice.label == "billing" and choice.probabilities is None
    assert choice.completion.text == "billing"
    body = chat_bodies(server)[-1]
    assert body["structured_outputs"] == {"choice": ["ops", "billing"]}
    assert body["temperature"] == 0.0
    assert "guided_choice" not in body


def test_choose_rejects_an_answer_outside_the_choices(
    backend: VLLMServerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = backend._complete

    def ignore_constraint(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("structured_outputs")
        return original(*args, **kwargs)

    monkeypatch.setattr(backend, "_complete", ignore_constraint)
    with pytest.raises(LLMRequestError, match="not one of"):
        backend.choose(ask("pick"), ["ops", "billing"], None)


def test_choose_refuses_an_empty_set_before_any_request(
    backend: VLLMServerBackend, server: FakeVLLMServer
) -> None:
    with pytest.raises(LLMRequestError, match="at least one choice"):
        backend.choose(ask("pick"), [], None)
    assert chat_bodies(server) == []


def test_structured_sends_the_json_schema(
    backend: VLLMServerBackend, server: FakeVLLMServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"asset": {"type": "string"}, "severity": {"enum": ["low", "high"]}},
        "required": ["asset", "severity"],
    }
    completion = backend.structured(ask("summarise"), schema, CONFIG, None)
    answer = json.loads(completion.text)
    assert set(answer) == {"asset", "severity"} and answer["severity"] == "low"
    assert chat_bodies(server)[-1]["structured_outputs"] == {"json": schema}


def test_unknown_model_is_a_request_error(backend: VLLMServerBackend) -> None:
    with pytest.raises(LLMRequestError, match="The model `nope` does not exist") as error:
        backend.chat(ask("hi"), CONFIG, "nope")
    assert "/v1/chat/completions" in str(error.value) and "404" in str(error.value)
    assert isinstance(error.value, AdapterMissing)  # the client recovers from the registry


def test_server_error_is_unavailable_after_one_attempt(
    backend: VLLMServerBackend, server: FakeVLLMServer
) -> None:
    backend.model  # noqa: B018 - discover first so only the chat request is failed
    server.fail_next(1)
    with pytest.raises(LLMUnavailable, match="HTTP 500: fake injected failure"):
        backend.chat(ask("hi"), CONFIG, None)
    assert len(chat_bodies(server)) == 1
    assert backend.chat(ask("hi"), CONFIG, None).text.endswith("hi")


def test_rate_limit_is_unavailable(backend: VLLMServerBackend, server: FakeVLLMServer) -> None:
    server.fail_next(1, status=429)
    with pytest.raises(LLMUnavailable, match="HTTP 429"):
        backend.health()


def test_timeout_is_unavailable(server: FakeVLLMServer) -> None:
    with VLLMServerBackend(server.url, model=BASE, timeout_s=0.2) as backend:
        server.delay_s = 1.0
        with pytest.raises(LLMUnavailable, match=r"timed out after 0\.2s"):
            backend.chat(ask("hi"), CONFIG, None)


def test_stopped_server_is_unavailable_naming_the_url(server: FakeVLLMServer) -> None:
    with VLLMServerBackend(server.url, model=BASE) as backend:
        backend.health()
        server.stop()
        with pytest.raises(LLMUnavailable, match=re.escape(f"{server.url}/v1/chat/completions")):
            backend.chat(ask("hi"), CONFIG, None)
        with pytest.raises(LLMUnavailable, match=re.escape(f"{server.url}/health")):
            backend.health()


def test_api_key_is_sent_as_a_bearer_token() -> None:
    with FakeVLLMServer(base_model=BASE, api_key="sk-test") as server:
        with VLLMServerBackend(server.url, api_key="sk-test") as backend:
            backend.chat(ask("hi"), CONFIG, None)
            assert "sk-test" not in repr(backend)
        assert {r.headers["authorization"] for r in server.requests} == {"Bearer sk-test"}
        with (
            VLLMServerBackend(server.url, api_key="wrong") as backend,
            pytest.raises(LLMRequestError, match="401: Unauthorized"),
        ):
            backend.loaded_adapters()


def test_engine_backend_is_not_installed_here() -> None:
    with pytest.raises(BackendNotInstalled, match=r"needs a CUDA GPU and the gpu extra"):
        VLLMEngineBackend("HuggingFaceTB/SmolLM2-135M-Instruct")


class _FakeVLLM:
    """A fake ``vllm.LLM``: records calls, answers with RequestOutput-shaped objects."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[Any, Any, Any]] = []
        self.llm_engine = types.SimpleNamespace(
            added=[], removed=[], add_lora=self._add, remove_lora=self._remove
        )

    def _add(self, request: Any) -> bool:
        self.llm_engine.added.append(request)
        return True

    def _remove(self, lora_id: int) -> bool:
        self.llm_engine.removed.append(lora_id)
        return True

    def chat(self, conversations: Any, params: Any, use_tqdm: bool, lora_request: Any) -> Any:
        self.calls.append((conversations, params, lora_request))
        constraint = params.kwargs.get("structured_outputs")
        outputs = []
        for conversation in conversations:
            if constraint is not None and constraint.kwargs.get("choice"):
                text = constraint.kwargs["choice"][-1]
            else:
                text = f"echo {conversation[-1]['content']}"
            completion = types.SimpleNamespace(
                text=text, token_ids=[1] * len(text.split()), finish_reason="length"
            )
            outputs.append(types.SimpleNamespace(outputs=[completion], prompt_token_ids=[0] * 5))
        return outputs


def _record(**kwargs: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(kwargs=kwargs)


@pytest.fixture
def fake_vllm_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A fake ``vllm`` module (vLLM cannot run without a GPU) with the names the backend uses,
    and a torch that reports CUDA."""
    vllm = types.ModuleType("vllm")
    vllm.LLM = _FakeVLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = _record  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.StructuredOutputsParams = _record  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = lambda name, lora_id, path: types.SimpleNamespace(  # type: ignore[attr-defined]
        lora_name=name, lora_int_id=lora_id, lora_path=path
    )
    vllm.sampling_params, vllm.lora, lora.request = sampling, lora, lora_request  # type: ignore[attr-defined]
    for name, module in [
        ("vllm", vllm),
        ("vllm.sampling_params", sampling),
        ("vllm.lora", lora),
        ("vllm.lora.request", lora_request),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "_ENGINES", {})
    return vllm


def test_engine_backend_maps_onto_the_vllm_api(
    fake_vllm_module: types.ModuleType, tmp_path: Path
) -> None:
    backend = VLLMEngineBackend("tiny", max_loras=2, gpu_memory_utilization=0.5)
    assert backend.loaded_adapters() == []
    backend.load_adapter("old", make_adapter(tmp_path, "old-v1"))
    backend.unload_adapter("old")
    backend.load_adapter("ops", make_adapter(tmp_path, "ops-v1"))
    with pytest.raises(AdapterLoadError, match="already loaded"):
        backend.load_adapter("ops", make_adapter(tmp_path, "ops-v2"))
    assert backend.loaded_adapters() == ["ops"]
    llm = vllm_engine._ENGINES[backend._key].llm
    assert llm.kwargs == {
        "model": "tiny",
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 64,
        "gpu_memory_utilization": 0.5,
    }
    old, ops = llm.llm_engine.added
    assert ops.lora_int_id > old.lora_int_id >= 1
    assert (ops.lora_name, ops.lora_path) == ("ops", str(tmp_path / "ops-v1"))
    assert llm.llm_engine.removed == [old.lora_int_id]

    completions = backend.chat_batch([ask("a"), ask("b c")], CONFIG, "ops")
    assert [c.text for c in completions] == ["echo a", "echo b c"]
    assert completions[0].adapter == "ops" and completions[0].backend == "vllm-engine"
    assert (completions[1].prompt_tokens, completions[1].completion_tokens) == (5, 3)
    assert completions[0].finish_reason == "length"
    conversations, params, lora = llm.calls[-1]
    assert conversations[1] == [m.to_dict() for m in ask("b c")]
    assert params.kwargs == {
        "max_tokens": 64,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["STOP"],
        "seed": 7,
    }
    assert lora is ops

    assert backend.choose(ask("x"), ["ops", "billing"], None).label == "billing"
    assert llm.calls[-1][1].kwargs["structured_outputs"].kwargs == {"choice": ["ops", "billing"]}
    backend.structured(ask("x"), {"type": "object"}, CONFIG, None)
    assert llm.calls[-1][1].kwargs["structured_outputs"].kwargs == {"json": {"type": "object"}}

    with pytest.raises(AdapterLoadError, match=r"no adapter_config\.json"):
        backend.load_adapter("bad", tmp_path)
    with pytest.raises(LLMRequestError, match="'other' is not loaded"):
        backend.chat(ask("x"), CONFIG, "other")
    backend.unload_adapter("ops")
    assert backend.loaded_adapters() == []
    assert llm.llm_engine.removed == [old.lora_int_id, ops.lora_int_id]
    with pytest.raises(AdapterLoadError, match="no adapter named 'ops'"):
        backend.unload_adapter("ops")
