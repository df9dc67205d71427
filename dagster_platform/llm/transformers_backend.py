"""In-process generation with transformers and peft on CPU: the default on a laptop.

The base model loads once per process (lazily, on the first call) and stays loaded; LoRA
adapters are added to it with peft under their own names, so swapping the served adapter is
a pointer change, never a reload of the base weights.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster_platform.lib.logs import get_logger
from dagster_platform.llm.base import (
    AdapterLoadError,
    AdapterMissing,
    Choice,
    Completion,
    GenerationConfig,
    LLMUnavailable,
    Message,
    choice_options,
)

log = get_logger(__name__)

_instances: dict[str, TransformersBackend] = {}
_instances_lock = threading.Lock()


def shared_backend(model: str, timeout_s: float = 120.0) -> TransformersBackend:
    """The process-wide backend of `model`: its weights load once however many callers."""
    with _instances_lock:
        backend = _instances.get(model)
        if backend is None:
            backend = _instances[model] = TransformersBackend(model)
        backend.timeout_s = timeout_s
        return backend


class TransformersBackend:
    """transformers + peft in this process; `timeout_s` bounds each generation's wall time."""

    name = "transformers"

    def __init__(self, model: str, timeout_s: float = 120.0):
        self.model_ref = model
        self.model = Path(model).name if Path(model).exists() else model
        self.timeout_s = timeout_s
        self._lock = threading.RLock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._adapters: dict[str, Path] = {}

    # --- loading -----------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_ref)
            model = AutoModelForCausalLM.from_pretrained(self.model_ref, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise LLMUnavailable(
                f"the base model {self.model_ref!r} could not be loaded ({exc}); "
                "run `dagster-platform models prepare` or set BASE_MODEL to a model folder"
            ) from exc
        model.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self._model, self._tokenizer = model, tokenizer
        log.info(
            "base model loaded",
            extra={"model": self.model, "seconds": round(time.perf_counter() - started, 2)},
        )

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            self._ensure_loaded()
            return self._tokenizer

    @property
    def torch_model(self) -> Any:
        """The loaded model (a peft model once adapters are loaded)."""
        with self._lock:
            self._ensure_loaded()
            return self._model

    def load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterLoadError(f"{path} is not a peft adapter (no adapter_config.json)")
        with self._lock:
            self._ensure_loaded()
            if name in self._adapters:
                raise AdapterLoadError(f"an adapter named {name!r} is already loaded")
            try:
                if isinstance(self._model, PeftModel):
                    self._model.load_adapter(str(path), adapter_name=name)
                else:
                    self._model = PeftModel.from_pretrained(
                        self._model, str(path), adapter_name=name
                    )
            except Exception as exc:  # peft raises ValueError, KeyError, RuntimeError on mismatch
                raise AdapterLoadError(f"adapter {name!r} from {path} did not load: {exc}") from exc
            self._model.eval()
            self._adapters[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise AdapterLoadError(f"no adapter named {name!r} is loaded")
            del self._adapters[name]
            if self._adapters:
                if self._model.active_adapter == name:
                    self._model.set_adapter(next(iter(self._adapters)))
                self._model.delete_adapter(name)
            else:
                self._model = self._model.unload()  # the base model, without LoRA layers

    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def health(self) -> None:
        with self._lock:
            self._ensure_loaded()

    # --- generation --------------------------------------------------------------------------

    @contextmanager
    def serving(self, adapter: str | None) -> Iterator[Any]:
        """The model with its forward passes routed through `adapter`, or through the bare
        base model; held under the backend's lock, so no other call switches adapters
        meanwhile (evaluations score candidates on the model directly)."""
        with self._lock:
            self._ensure_loaded()
            if adapter is not None and adapter not in self._adapters:
                raise AdapterMissing(
                    f"adapter {adapter!r} is not loaded (loaded: {self._adapters})"
                )
            if not self._adapters:
                yield self._model
            elif adapter is None:
                with self._model.disable_adapter():
                    yield self._model
            else:
                self._model.set_adapter(adapter)
                yield self._model

    def _encode(self, conversations: Sequence[Sequence[Message]]) -> Any:
        texts = [
            self._tokenizer.apply_chat_template(
                [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=True
            )
            for messages in conversations
        ]
        return self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def chat(
        self, messages: Sequence[Message], config: GenerationConfig, adapter: str | None = None
    ) -> Completion:
        return self.chat_batch([messages], config, adapter)[0]

    def chat_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        config: GenerationConfig,
        adapter: str | None = None,
    ) -> list[Completion]:
        import torch

        if not conversations:
            return []
        with self._lock:
            self._ensure_loaded()
            started = time.perf_counter()
            inputs = self._encode(conversations)
            settings: dict[str, Any] = {
                "max_new_tokens": config.max_new_tokens,
                "max_time": self.timeout_s,
                "pad_token_id": self._tokenizer.pad_token_id,
            }
            if config.temperature > 0:
                if config.seed is not None:
                    torch.manual_seed(config.seed)
                settings.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
            else:
                settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if config.stop:
                settings.update(stop_strings=list(config.stop), tokenizer=self._tokenizer)
            with self.serving(adapter), torch.inference_mode():
                output = self._model.generate(**inputs, **settings)
            elapsed = time.perf_counter() - started
        prompt_width = inputs["input_ids"].shape[1]
        completions = []
        for row, mask in zip(output, inputs["attention_mask"], strict=True):
            generated = row[prompt_width:]
            finished = bool((generated == self._tokenizer.eos_token_id).any())
            new_tokens = int((generated != self._tokenizer.pad_token_id).sum()) + int(finished)
            text = self._tokenizer.decode(generated, skip_special_tokens=True)
            text, stopped = _cut_at_stop(text, config.stop)
            if finished or stopped:
                reason = "stop"
            elif len(generated) >= config.max_new_tokens:
                reason = "length"
            else:
                reason = "time"
            completions.append(
                Completion(
                    text=text.strip(),
                    model=self.model,
                    adapter=adapter,
                    backend=self.name,
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=min(new_tokens, len(generated)),
                    latency_s=elapsed,
                    finish_reason=reason,
                )
            )
        return completions

    def choose(
        self, messages: Sequence[Message], choices: Sequence[str], adapter: str | None = None
    ) -> Choice:
        """Score every choice as a continuation of the prompt: exact constrained decoding over a
        finite set, with a probability per label (softmax of the summed token log-likelihoods)."""
        import torch

        choices = choice_options(choices)
        with self._lock:
            self._ensure_loaded()
            started = time.perf_counter()
            prompt = self._encode([messages])["input_ids"][0].tolist()
            endings = [
                self._tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices
            ]
            with self.serving(adapter), torch.inference_mode():
                scores = self._continuation_scores(prompt, endings)
            elapsed = time.perf_counter() - started
        probabilities = torch.softmax(torch.tensor(scores), dim=0).tolist()
        best = max(range(len(choices)), key=lambda i: scores[i])
        completion = Completion(
            text=choices[best],
            model=self.model,
            adapter=adapter,
            backend=self.name,
            prompt_tokens=len(prompt),
            completion_tokens=len(endings[best]),
            latency_s=elapsed,
            finish_reason="stop",
        )
        return Choice(
            choices[best],
            {c: round(p, 6) for c, p in zip(choices, probabilities, strict=True)},
            completion,
        )

    def _continuation_scores(self, prompt: list[int], endings: list[list[int]]) -> list[float]:
        """Summed log-likelihood of each ending after the prompt. The prompt (a few-shot routing
        prompt runs to hundreds of tokens) goes through the model once; its key/value cache is
        shared by the endings, which then cost a few tokens each."""
        import torch

        first = self._model(input_ids=torch.tensor([prompt]), use_cache=True)
        first_log_probs = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
        cache = first.past_key_values
        cache.batch_repeat_interleave(len(endings))
        width = max(len(ending) for ending in endings)
        ids = torch.full((len(endings), width), self._tokenizer.pad_token_id)
        mask = torch.zeros((len(endings), len(prompt) + width), dtype=torch.long)
        mask[:, : len(prompt)] = 1
        for row, ending in enumerate(endings):
            ids[row, : len(ending)] = torch.tensor(ending)
            mask[row, len(prompt) : len(prompt) + len(ending)] = 1
        logits = self._model(input_ids=ids, attention_mask=mask, past_key_values=cache).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        return [
            float(first_log_probs[ending[0]])
            + sum(float(log_probs[row, i - 1, token]) for i, token in enumerate(ending) if i)
            for row, ending in enumerate(endings)
        ]

    def structured(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any],
        config: GenerationConfig,
        adapter: str | None = None,
    ) -> Completion:
        """Prompted, not constrained: the schema goes into the system message and the first JSON
        object of the answer is returned (the client validates it against the schema)."""
        instruction = Message(
            "system",
            "Answer with one JSON object only, no prose, that follows this JSON schema:\n"
            + json.dumps(schema, ensure_ascii=False),
        )
        completion = self.chat([instruction, *messages], config, adapter)
        extracted = first_json_object(completion.text)
        return completion if extracted is None else _with_text(completion, extracted)


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _with_text(completion: Completion, text: str) -> Completion:
    return Completion(**{**completion.__dict__, "text": text})


_OPENING = re.compile(r"[\{\[]")


def first_json_object(text: str) -> str | None:
    """The first decodable JSON object or array in `text` (models wrap JSON in prose/fences)."""
    decoder = json.JSONDecoder()
    for match in _OPENING.finditer(text):
        try:
            _value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return text[match.start() : end]
    return None
