"""LoRA or QLoRA training of the base model on one SFT dataset version, tracked in MLflow.

transformers' `Trainer` runs the loop: on CPU its bookkeeping costs little beside a forward and
backward pass of even a 135M model (`dagster-platform bench finetune`: 1.03 times the tokens/s
of a bare peft loop, the same peak memory), and it brings accumulation, clipping, the scheduler
and token counting. A callback streams loss and tokens/s to the logs, to `on_progress` and to
MLflow, and stops the run when `stop` is set.

Nothing half-done survives: the adapter is written to a hidden staging folder that becomes
`output_dir` only when training finished, and the MLflow run gets its `adapter` artifact only
then. An interrupted or failed run ends KILLED or FAILED with no artifact and no folder, so the
registry has nothing to register.

QLoRA (bitsandbytes 4-bit NF4 base weights, bf16 compute) runs on the CPU as on CUDA; the recipe's
`qlora` field says when (recipe.py), and the run's params say which was used and why. Its
adapter is a plain peft folder: it loads over the unquantised base, as vLLM serves it.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_platform.finetune.dataset import MANIFEST, load_split
from dagster_platform.finetune.recipe import Recipe
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.tracking import experiment_id_for

log = get_logger(__name__)

IGNORE_INDEX = -100  # label of a position the loss skips (prompt and padding)
CLEAR_REFS = "/proc/self/clear_refs"
PROC_STATUS = "/proc/self/status"
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
BITSANDBYTES = "bitsandbytes>=0.50,<0.51"  # as pyproject.toml pins it: 4-bit kernels for the CPU
ADAPTER_ARTIFACT = "adapter"
RECIPE_FILE = "recipe.yaml"
DATASET_FILE = "dataset.json"


class TrainingError(RuntimeError):
    """Training could not start or did not finish; nothing was registered."""


class TrainingInterrupted(TrainingError):
    """Training was asked to stop before it finished; nothing was registered."""


class QLoRAUnavailable(TrainingError):
    """The recipe resolves to QLoRA but bitsandbytes is missing or cannot quantise here."""


@dataclass(frozen=True)
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    tokens_per_s: float  # over the steps since the previous report
    learning_rate: float


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    adapter_dir: Path
    steps: int
    epochs_done: float
    train_loss: float  # mean over the last logging window
    tokens: int  # non-padding tokens trained on, prompt and completion
    tokens_per_s: float  # over the training loop
    train_s: float
    wall_s: float  # loading, tokenising, training, saving and logging
    peak_memory_mb: float  # since the run began: resident (CPU) or GPU allocator (CUDA)
    dataset_version: str
    examples: int
    dropped: int  # examples whose completion did not fit max_seq_length
    qlora: bool
    qlora_reason: str
    device: str


@dataclass(frozen=True)
class EncodedDataset:
    features: list[dict[str, list[int]]]
    dropped: int

    @property
    def tokens(self) -> int:
        return sum(len(feature["input_ids"]) for feature in self.features)


# --- data ------------------------------------------------------------------------------------


def dataset_version(dataset_dir: Path) -> str:
    manifest = Path(dataset_dir) / MANIFEST
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{manifest} is missing or names no version: {exc}") from exc


def encode_example(
    tokenizer: Any, prompt: str, completion: str, max_length: int
) -> dict[str, list[int]] | None:
    """Prompt and completion tokenised apart, so the loss sees the completion only; cut to
    `max_length` from the end. None when not one completion token would fit."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion + tokenizer.eos_token, add_special_tokens=False)
    room = max_length - len(prompt_ids)
    if room <= 0:
        return None
    answer = completion_ids["input_ids"][:room]
    return {
        "input_ids": prompt_ids + answer,
        "attention_mask": [1] * (len(prompt_ids) + len(answer)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer,
    }


def encode_dataset(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int, seed: int
) -> EncodedDataset:
    """Every row encoded, in one order shuffled by the seed (the same in every epoch and in the
    benchmark's bare loop), nothing sorted by length."""
    features, dropped = [], 0
    for row in rows:
        encoded = encode_example(tokenizer, row["prompt"], row["completion"], max_length)
        if encoded is None:
            dropped += 1
        else:
            features.append(encoded)
    random.Random(seed).shuffle(features)
    return EncodedDataset(features, dropped)


def collator(tokenizer: Any) -> Any:
    """Pads each batch to its own longest example; padded labels are ignored by the loss."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
    )


# --- model -----------------------------------------------------------------------------------


def load_tokenizer(base_model_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_base_model(base_model_path: str, qlora: bool, device: str = "cpu") -> Any:
    """The base weights from a local folder: fp32 for LoRA (the Trainer moves them to CUDA),
    4-bit NF4 placed on `device` for QLoRA, made trainable by peft (fp32 norms and embeddings,
    gradient checkpointing)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        if not qlora:
            model = AutoModelForCausalLM.from_pretrained(
                base_model_path, dtype=torch.float32, local_files_only=True
            )
        else:
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            model = AutoModelForCausalLM.from_pretrained(
                base_model_path,
                quantization_config=quantization,
                dtype=torch.bfloat16,
                device_map={"": 0} if device == "cuda" else "cpu",
                local_files_only=True,
            )
            model = prepare_model_for_kbit_training(
                model, gradient_checkpointing_kwargs={"use_reentrant": False}
            )  # torch's recommended checkpointing (it warns when the choice is left to it)
    except OSError as exc:
        raise TrainingError(
            f"the base model {base_model_path!r} could not be loaded: {exc}"
        ) from exc
    model.config.use_cache = False
    return model


def fp32_weights_mb(base_model_path: str) -> float | None:
    """What LoRA's fp32 copy of the base weights takes, from the size and dtype of the folder's
    safetensors files; None when the path is no such folder (a hub id, say)."""
    folder = Path(base_model_path)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    stored = sum(file.stat().st_size for file in files)
    return stored * 4 / DTYPE_BYTES.get(str(dtype), 4) / 2**20


def available_memory_mb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def linear_module_names(model: Any) -> list[str]:
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def peft_model(recipe: Recipe, model: Any) -> Any:
    """The base model wrapped with fresh LoRA layers, after checking the target modules."""
    from peft import LoraConfig, get_peft_model

    recipe.check_target_modules(linear_module_names(model))
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.lora_target_modules),
    )
    return get_peft_model(model, config)


def check_qlora_available(device: str) -> None:
    """bitsandbytes is there and round-trips a small tensor through NF4 on `device`, so a
    missing package or a build without kernels for this device fails before a run exists."""
    try:
        import bitsandbytes.functional as bnb
    except ImportError as exc:
        raise QLoRAUnavailable(
            "QLoRA needs the bitsandbytes package, which is not installed: "
            f"pip install '{BITSANDBYTES}' (or set qlora: false in the recipe)"
        ) from exc
    import torch

    try:
        sample = torch.linspace(-1.0, 1.0, 128, dtype=torch.bfloat16, device=device)
        bnb.dequantize_4bit(*bnb.quantize_4bit(sample, quant_type="nf4"))
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise QLoRAUnavailable(
            f"bitsandbytes {_version('bitsandbytes')} cannot quantise to 4-bit NF4 on {device} "
            f"with torch {torch.__version__}: {exc}; install '{BITSANDBYTES}' "
            "or set qlora: false"
        ) from exc


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(version unknown)"


def training_arguments(recipe: Recipe, workdir: Path, bf16: bool) -> Any:
    from transformers import TrainingArguments

    length = (
        {"max_steps": recipe.max_steps}
        if recipe.max_steps is not None
        else {"num_train_epochs": recipe.epochs}
    )
    return TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type="linear",
        optim="adamw_torch_fused",
        max_grad_norm=1.0,
        logging_strategy="steps",
        logging_steps=recipe.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",  # the order encode_dataset shuffled by the seed
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        seed=recipe.seed,
        bf16=bf16,
        **length,
    )


def reset_peak_memory(device: str) -> None:
    """Start the peak over, so an earlier run in the same process (a test session, a Dagster
    run worker) does not count: the GPU allocator's peak on CUDA, the kernel's high-water mark
    of resident memory (VmHWM, reset by writing 5 to /proc/self/clear_refs) on Linux."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # not Linux: the peak is the process's lifetime one
        Path(CLEAR_REFS).write_text("5")


def peak_memory_mb(device: str) -> float:
    """Peak since `reset_peak_memory`: tensors on the GPU (CUDA; weights, activations and
    optimizer state of either path), else the process's resident memory, which on the CPU is
    where the weights of either path live."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path(PROC_STATUS).read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes there, KiB on Linux


# --- tracking --------------------------------------------------------------------------------


def _params(recipe: Recipe, extra: Mapping[str, object]) -> dict[str, str]:
    fields = recipe.model_dump(mode="json")
    fields["lora_target_modules"] = ",".join(recipe.lora_target_modules)
    return {key: str(value) for key, value in {**fields, **extra}.items()}


class _Reporter:
    """Trainer callback: stream metrics out, stop on request, log the final window too."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        on_progress: Callable[[TrainProgress], None] | None,
        stop: threading.Event | None,
    ):
        self.client, self.run_id = client, run_id
        self.on_progress, self.stop = on_progress, stop
        self.last_loss: float | None = None
        self._tokens, self._time = 0, time.perf_counter()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        reporter = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                reporter._time = time.perf_counter()

            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                reporter.check_stop(state)

            def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                reporter.check_stop(state)

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step >= state.max_steps:
                    control.should_log = True  # the last window, even off the logging grid

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
            ) -> None:
                if logs and "loss" in logs:
                    reporter.report(state, logs)

        return Callback()

    def check_stop(self, state: Any) -> None:
        if self.stop is not None and self.stop.is_set():
            raise TrainingInterrupted(
                f"training stopped on request at step {state.global_step} of {state.max_steps}"
            )

    def report(self, state: Any, logs: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = time.perf_counter()
        tokens = int(state.num_input_tokens_seen)
        rate = (tokens - self._tokens) / max(now - self._time, 1e-9)
        self._tokens, self._time = tokens, now
        progress = TrainProgress(
            step=state.global_step,
            max_steps=state.max_steps,
            loss=float(logs["loss"]),
            tokens_per_s=rate,
            learning_rate=float(logs.get("learning_rate", 0.0)),
        )
        self.last_loss = progress.loss
        stamp = int(time.time() * 1000)
        values = {
            "loss": progress.loss,
            "tokens_per_s": progress.tokens_per_s,
            "learning_rate": progress.learning_rate,
            "tokens": float(tokens),
        }
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, stamp, progress.step) for k, v in values.items()],
        )
        log.info(
            "training progress",
            extra={
                "step": progress.step,
                "max_steps": progress.max_steps,
                "loss": round(progress.loss, 4),
                "tokens_per_s": round(progress.tokens_per_s, 1),
            },
        )
        if self.on_progress is not None:
            self.on_progress(progress)


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    version: str
    data: EncodedDataset
    tokenizer: Any
    model: Any
    qlora: bool
    qlora_reason: str
    device: str


def _prepare(
    recipe: Recipe, dataset_dir: Path, output_dir: Path, base_model_path: str
) -> _Prepared:
    """Every check that can fail on bad input, before an MLflow run exists."""
    import torch

    if output_dir.exists():
        raise TrainingError(f"{output_dir} already exists; an adapter folder is never overwritten")
    version = dataset_version(dataset_dir)
    rows = load_split(dataset_dir, "train")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    qlora, reason = recipe.qlora_decision(
        cuda, fp32_weights_mb(base_model_path), available_memory_mb()
    )
    if qlora:
        check_qlora_available(device)
    tokenizer = load_tokenizer(base_model_path)
    data = encode_dataset(tokenizer, rows, recipe.max_seq_length, recipe.seed)
    if not data.features:
        raise TrainingError(
            f"{dataset_dir} has no training example that fits max_seq_length "
            f"{recipe.max_seq_length} ({len(rows)} rows, {data.dropped} too long)"
        )
    torch.manual_seed(recipe.seed)
    reset_peak_memory(device)  # the peak covers loading the weights, which QLoRA quantises
    model = peft_model(recipe, load_base_model(base_model_path, qlora, device))
    return _Prepared(version, data, tokenizer, model, qlora, reason, device)


def _save_adapter(
    folder: Path, model: Any, recipe: Recipe, version: str, dataset_dir: Path
) -> None:
    model.save_pretrained(folder)
    (folder / RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")
    (folder / DATASET_FILE).write_text(
        json.dumps({"version": version, "path": str(dataset_dir.resolve())}) + "\n",
        encoding="utf-8",
    )


def train_adapter(
    recipe: Recipe,
    dataset_dir: Path,
    output_dir: Path,
    *,
    base_model_path: str,
    tracking_uri: str,
    experiment: str = "finetune",
    artifact_root: Path | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train one adapter and leave it in `output_dir/adapter` and in a FINISHED MLflow run's
    `adapter` artifact, with its recipe and dataset version beside it.

    Raises RecipeError, QLoRAUnavailable or TrainingError before any run is created when the
    inputs are wrong; TrainingInterrupted when `stop` is set. Any failure or interruption
    (KeyboardInterrupt, a signal raised as an exception) ends the run KILLED or FAILED and
    removes every file written, then propagates unchanged.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from transformers import PrinterCallback, Trainer

    started = time.perf_counter()
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    ready = _prepare(recipe, dataset_dir, output_dir, base_model_path)
    version, examples = ready.version, len(ready.data.features)
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(
        experiment_id_for(client, experiment, artifact_root),
        run_name=f"lora-{version}",
        tags={"dataset_version": version, "kind": "lora_adapter"},
    ).info.run_id
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-partial-", dir=output_dir.parent))
    written = staging
    try:
        params = _params(
            recipe,
            {
                "base_model_path": base_model_path,
                "dataset_version": version,
                "dataset_path": dataset_dir.resolve(),
                "examples": examples,
                "dropped_examples": ready.data.dropped,
                "device": ready.device,
                "qlora_resolved": ready.qlora,
                "qlora_reason": ready.qlora_reason,
            },
        )
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        reporter = _Reporter(client, run_id, on_progress, stop)
        trainer = Trainer(
            model=ready.model,
            args=training_arguments(recipe, staging / "trainer", bf16=ready.device == "cuda"),
            train_dataset=ready.data.features,
            data_collator=collator(ready.tokenizer),
            callbacks=[reporter.callback()],
        )
        trainer.remove_callback(PrinterCallback)  # progress goes to our logs, not to stdout
        log.info(
            "training started",
            extra={
                "dataset_version": version,
                "examples": examples,
                "qlora": ready.qlora,
                "qlora_reason": ready.qlora_reason,
            },
        )
        train_started = time.perf_counter()
        output = trainer.train()
        train_s = time.perf_counter() - train_started
        reporter.check_stop(trainer.state)

        _save_adapter(staging / ADAPTER_ARTIFACT, ready.model, recipe, version, dataset_dir)
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        staging.rename(output_dir)
        written = output_dir
        tokens = int(trainer.state.num_input_tokens_seen)
        result = TrainResult(
            run_id=run_id,
            adapter_dir=output_dir / ADAPTER_ARTIFACT,
            steps=output.global_step,
            epochs_done=float(trainer.state.epoch or 0.0),
            train_loss=output.training_loss if reporter.last_loss is None else reporter.last_loss,
            tokens=tokens,
            tokens_per_s=tokens / train_s,
            train_s=train_s,
            wall_s=time.perf_counter() - started,
            peak_memory_mb=peak_memory_mb(ready.device),
            dataset_version=version,
            examples=examples,
            dropped=ready.data.dropped,
            qlora=ready.qlora,
            qlora_reason=ready.qlora_reason,
            device=ready.device,
        )
        _log_final(client, result)
        client.log_artifacts(run_id, str(result.adapter_dir), ADAPTER_ARTIFACT)
        client.set_terminated(run_id, status="FINISHED")
    except BaseException as exc:
        _abandon(client, run_id, exc, written)
        raise
    log.info(
        "adapter trained",
        extra={
            "mlflow_run_id": run_id,
            "steps": result.steps,
            "train_loss": round(result.train_loss, 4),
            "tokens_per_s": round(result.tokens_per_s, 1),
        },
    )
    return result


def _log_final(client: Any, result: TrainResult) -> None:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    values = {
        "train_loss": result.train_loss,
        "train_tokens": result.tokens,
        "train_tokens_per_s": result.tokens_per_s,
        "train_s": result.train_s,
        "wall_s": result.wall_s,
        "peak_memory_mb": result.peak_memory_mb,
        "steps": result.steps,
        "epochs_done": result.epochs_done,
    }
    client.log_batch(
        result.run_id,
        metrics=[Metric(k, float(v), stamp, result.steps) for k, v in values.items()],
    )


def _abandon(client: Any, run_id: str, exc: BaseException, written: Path) -> None:
    """Remove what the run wrote (a half-uploaded artifact included) and end it KILLED
    (stopped) or FAILED (broken)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    shutil.rmtree(written, ignore_errors=True)
    interrupted = isinstance(exc, TrainingInterrupted) or not isinstance(exc, Exception)
    status = "KILLED" if interrupted else "FAILED"
    try:
        if client.list_artifacts(run_id, ADAPTER_ARTIFACT):
            artifact_uri = client.get_run(run_id).info.artifact_uri
            get_artifact_repository(artifact_uri).delete_artifacts(ADAPTER_ARTIFACT)
        client.set_terminated(run_id, status=status)
    except Exception:  # the original error matters more than a tracking store that is down
        log.exception("could not mark the mlflow run", extra={"mlflow_run_id": run_id})
    log.warning(
        "training abandoned; nothing registered",
        extra={"mlflow_run_id": run_id, "status": status, "error": type(exc).__name__},
    )
