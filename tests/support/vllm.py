"""The real vLLM CPU server for the tests marked `vllm`: one per session, started from the
environment `make test` creates (`dagster-platform vllm install`), serving the packaged
SmolLM2; and real peft adapters for it."""

from __future__ import annotations

from pathlib import Path

from dagster_platform.kafka.broker import free_port
from dagster_platform.llm.vllm_local import LocalVLLMServer, VLLMEnvironment
from dagster_platform.settings import REPO_ROOT
from tests.support.tiny_models import PREPARED_LLM

SHARED_ENVIRONMENT = VLLMEnvironment(REPO_ROOT / ".state" / "vllm" / "venv")
MAX_LORA_RANK = 16


def session_server(run_dir: Path, port: int | None = None) -> LocalVLLMServer:
    """A local server on a free port with its pid and log under `run_dir` (not started)."""
    SHARED_ENVIRONMENT.ensure()
    return LocalVLLMServer(
        environment=SHARED_ENVIRONMENT,
        run_dir=run_dir,
        model_dir=PREPARED_LLM,
        port=port or free_port(),
        max_lora_rank=MAX_LORA_RANK,
        max_model_len=1024,
    )


def build_lora(target: Path, rank: int = 8, seed: int = 0) -> Path:
    """A LoRA of the packaged SmolLM2 (q and v projections, random B so it changes answers);
    the benchmark's builder, imported here only when asked (it loads torch)."""
    from benchmarks.llm import build_lora as benchmark_lora

    return benchmark_lora(target, str(PREPARED_LLM), seed, rank)
