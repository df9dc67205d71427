"""Where the fine-tuning loop reads its recipe and its promotion gate.

Both are YAML in `data/finetune/` by default, so a change of rank or margin is a reviewed
change of data, not of code; a deployment points the resource elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagster_platform.finetune.gate import DEFAULT_GATE, GateConfig
from dagster_platform.finetune.recipe import DEFAULT_RECIPE, Recipe
from dagster_platform.llm.service import resolve_base_model
from dagster_platform.settings import get_settings


class FinetuneResource(dg.ConfigurableResource):
    """The training recipe and the promotion gate of the loop."""

    recipe_path: str | None = Field(
        default=None, description="Training recipe YAML; default data/finetune/recipe.yaml."
    )
    gate_path: str | None = Field(
        default=None, description="Promotion gate YAML; default data/finetune/gate.yaml."
    )
    feedback_threshold: int | None = Field(
        default=None, ge=1, description="Overrides DAGSTER_PLATFORM_FINETUNE_THRESHOLD."
    )

    @property
    def threshold(self) -> int:
        """New usable ratings since the last dataset that start the loop."""
        return self.feedback_threshold or get_settings().finetune_feedback_threshold

    def recipe(self) -> Recipe:
        return Recipe.load(Path(self.recipe_path) if self.recipe_path else DEFAULT_RECIPE)

    def gate(self) -> GateConfig:
        return GateConfig.load(Path(self.gate_path) if self.gate_path else DEFAULT_GATE)

    def base_model(self) -> str:
        """The recipe's base model, else the one the LLM serves: an adapter only fits the
        base it was trained on."""
        return self.recipe().base_model or resolve_base_model(get_settings())
