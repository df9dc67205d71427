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
        default="auto", description="4-bit base weights (bitsandbytes); auto: only on CUDA."
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

    def resolved_qlora(self, cuda_available: bool) -> bool:
        """Whether to train on 4-bit base weights; `auto` means exactly when CUDA is there."""
        return cuda_available if self.qlora == "auto" else self.qlora

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
