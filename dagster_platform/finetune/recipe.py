"""The LoRA/QLoRA training recipe: hyperparameters kept as data in YAML, validated before any
weights load, so a typo costs a second and not a training run.

Field names follow the alignment-handbook recipes (`lora_r`, `lora_alpha`, ...). The recipe is
echoed into MLflow params and saved beside the adapter it produced.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    StrictBool,
    model_validator,
)

from dagster_platform.lib.yaml_models import load_model
from dagster_platform.settings import REPO_ROOT

DEFAULT_RECIPE = REPO_ROOT / "data" / "finetune" / "recipe.yaml"
ALL_LINEAR = "all-linear"  # peft's own shorthand: every linear layer but the output head
# On the CPU `qlora: auto` picks QLoRA once LoRA's fp32 base weights would take more than this
# share of the available memory, the rest being for activations and the runtime (SmolLM2-135M
# on the default recipe: 0.5 GB of weights in LoRA's 4.3 GB peak).
QLORA_CPU_MEMORY_SHARE = 0.5


class RecipeError(ValueError):
    """A recipe file or field is wrong; the message names the file and the field."""


class Recipe(BaseModel):
    """One LoRA fine-tuning run: which base model, which adapter shape, how long and how fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str | None = Field(
        default=None, description="Model folder; unset means the packaged SmolLM2-135M-Instruct."
    )
    lora_r: PositiveInt = 8
    lora_alpha: PositiveFloat = 16.0
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_target_modules: tuple[str, ...] = Field(default=("q_proj", "v_proj"), min_length=1)
    learning_rate: PositiveFloat = 2e-4
    epochs: PositiveFloat | None = None
    max_steps: PositiveInt | None = None
    max_seq_length: PositiveInt = 512
    batch_size: PositiveInt = 4
    gradient_accumulation: PositiveInt = 1
    qlora: Literal["auto"] | StrictBool = Field(
        default="auto",
        description=(
            "4-bit NF4 base weights (bitsandbytes, bf16 compute), on CUDA or the CPU. auto: "
            "QLoRA on CUDA; on the CPU only when LoRA's fp32 base weights would exceed half the "
            "available memory. Measured on 2 shared CPU cores (`dagster-platform bench finetune`, "
            "SmolLM2-135M, the default recipe): QLoRA peaks at 0.56 times LoRA's memory (2.4 "
            "against 4.3 GB, mostly from the gradient checkpointing peft turns on with it), "
            "trains at about LoRA's tokens/s (1.04 times; 0.95 with steps interleaved on the same "
            "batches), starts from a base 0.3 nats worse in loss, and its adapter is served over "
            "the unquantised base: LoRA while it fits."
        ),
    )
    seed: int = Field(default=42, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat = 0.0
    logging_steps: PositiveInt = 5

    @model_validator(mode="after")
    def _one_length(self) -> Self:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of `epochs` and `max_steps`")
        return self

    @classmethod
    def load(cls, path: Path = DEFAULT_RECIPE) -> Recipe:
        """Read a recipe file; every error names the file and the field at fault."""
        return load_model(
            path,
            cls,
            RecipeError,
            name="recipe file",
            expected="training recipe",
            shape="must hold a mapping of fields",
        )

    def qlora_decision(
        self,
        cuda_available: bool,
        fp32_weights_mb: float | None = None,
        available_memory_mb: float | None = None,
    ) -> tuple[bool, str]:
        """Whether to train on 4-bit base weights, and why, in words for the run's params.

        On the CPU QLoRA buys memory with accuracy (the `qlora` field's figures), so `auto`
        takes it only when LoRA's weights would crowd out the rest; an unknown size keeps LoRA."""
        if self.qlora != "auto":
            return self.qlora, f"the recipe sets qlora: {str(self.qlora).lower()}"
        if cuda_available:
            return True, "qlora: auto on CUDA: QLoRA"
        if fp32_weights_mb is None or available_memory_mb is None:
            return False, "qlora: auto on the CPU, the base model's size unknown: LoRA"
        sizes = f"fp32 base weights {fp32_weights_mb:.0f} MB, {available_memory_mb:.0f} MB free"
        if fp32_weights_mb > QLORA_CPU_MEMORY_SHARE * available_memory_mb:
            return True, f"qlora: auto on the CPU, {sizes}: over half, QLoRA"
        return False, f"qlora: auto on the CPU, {sizes}: within half, LoRA"

    def resolved_qlora(
        self,
        cuda_available: bool,
        fp32_weights_mb: float | None = None,
        available_memory_mb: float | None = None,
    ) -> bool:
        """Whether to train on 4-bit base weights (the reason: `qlora_decision`)."""
        return self.qlora_decision(cuda_available, fp32_weights_mb, available_memory_mb)[0]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def check_target_modules(self, module_names: Iterable[str]) -> None:
        """Refuse target modules the model lacks (peft matches a target by the last parts of a
        module's dotted name); the error lists the linear layer names the model does have."""
        names = list(module_names)
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
        missing = [
            target
            for target in self.lora_target_modules
            if target != ALL_LINEAR
            and not any(name == target or name.endswith(f".{target}") for name in names)
        ]
        if missing:
            raise RecipeError(
                f"lora_target_modules: the model has no module {', '.join(map(repr, missing))}; "
                f"its linear layers are: {', '.join(leaves)} (or use {ALL_LINEAR!r})"
            )
