"""The promotion gate (decision 6): a challenger takes `champion` only when it beats the
incumbent on the primary metric by the configured margin and regresses no guardrail.

The incumbent is the champion, or the base model when there is none, so the first adapter
must already beat the model it is trained on. The rule is a pure function of two sets of
metrics and the configuration: the same evaluation always gets the same decision, and every
refusal carries the metric and both values that caused it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dagster_platform.lib.yaml_models import load_model
from dagster_platform.settings import REPO_ROOT

DEFAULT_GATE = REPO_ROOT / "data" / "finetune" / "gate.yaml"

Direction = Literal["higher", "lower"]
Kind = Literal["absolute", "relative"]

# Every metric the evaluation produces, and which way is better.
METRIC_DIRECTIONS: dict[str, Direction] = {
    "eval_loss": "lower",
    "perplexity": "lower",
    "rouge_l": "higher",
    "routing_accuracy": "higher",
    "tool_call_accuracy": "higher",
    "tool_call_precision": "higher",
    "grounding": "higher",
    "headline_pass_rate": "higher",
}


class GateConfigError(ValueError):
    """The gate file is missing or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Metric(_Strict):
    metric: str
    direction: Direction

    @model_validator(mode="after")
    def _known(self) -> _Metric:
        expected = METRIC_DIRECTIONS.get(self.metric)
        if expected is None:
            raise ValueError(
                f"unknown metric {self.metric!r}; known: {', '.join(METRIC_DIRECTIONS)}"
            )
        if self.direction != expected:
            raise ValueError(f"{self.metric} is better {expected}, not {self.direction}")
        return self


class PrimaryMetric(_Metric):
    """Better by at least `margin`: absolute in the metric's units, or relative to the
    incumbent's value (0.02 = 2 %)."""

    margin: float = Field(ge=0)
    margin_kind: Kind = "absolute"


class Guardrail(_Metric):
    """Worse by more than `tolerance` (absolute, or relative to the incumbent) refuses."""

    tolerance: float = Field(default=0.0, ge=0)
    tolerance_kind: Kind = "absolute"


class EvaluationSizes(_Strict):
    max_eval_examples: int = Field(default=32, gt=0, description="Eval rows generated for ROUGE")
    max_loss_examples: int = Field(default=256, gt=0, description="Eval rows scored for loss")
    max_new_tokens: int = Field(default=96, gt=0)
    max_seq_length: int = Field(default=1024, gt=0)
    batch_size: int = Field(default=4, gt=0)
    agent_cases: int = Field(default=10, ge=0, description="Golden questions; 0 skips them")
    headline_cases: int = Field(
        default=8, ge=0, description="Held-out golden questions for the headline pass rate"
    )


class GateConfig(_Strict):
    primary: PrimaryMetric
    guardrails: tuple[Guardrail, ...] = ()
    evaluation: EvaluationSizes = EvaluationSizes()
    min_examples: int = Field(default=20, gt=0, description="Training examples a run needs")

    @classmethod
    def load(cls, path: Path = DEFAULT_GATE) -> GateConfig:
        return load_model(
            path,
            cls,
            GateConfigError,
            name="gate file",
            expected="gate configuration",
            shape="expected a mapping with `primary:` at the top",
        )


@dataclass(frozen=True)
class CandidateMetrics:
    """What one candidate scored; `error` set means it could not be evaluated."""

    name: str  # challenger | champion | base
    version: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def label(self) -> str:
        if self.name == "base":
            return "base model"
        return f"{self.name} v{self.version}" if self.version else self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    metric: str
    role: Literal["primary", "guardrail"]
    direction: Direction
    challenger: float | None
    incumbent: float | None
    change: float | None  # improvement (positive: better), in `kind` units
    threshold: float  # the margin a primary must reach; the regression a guardrail tolerates
    kind: Kind
    passed: bool


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    comparisons: list[Comparison]
    challenger: str
    incumbent: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def improvement(challenger: float, incumbent: float, direction: Direction, kind: Kind) -> float:
    """How much better the challenger is (negative: worse), absolute or relative."""
    gain = challenger - incumbent if direction == "higher" else incumbent - challenger
    if kind == "absolute":
        return gain
    if incumbent:
        return gain / abs(incumbent)
    return 0.0 if gain == 0 else math.copysign(math.inf, gain)


def _show(value: float, kind: Kind) -> str:
    return f"{value:.1%}" if kind == "relative" else f"{value:.4f}"


def _pair(metric: str, challenger: CandidateMetrics, incumbent: CandidateMetrics) -> str:
    return (
        f"{metric} {challenger.metrics[metric]:.4f} ({challenger.label}) vs "
        f"{incumbent.metrics[metric]:.4f} ({incumbent.label})"
    )


def decide(
    challenger: CandidateMetrics, incumbent: CandidateMetrics, config: GateConfig
) -> Decision:
    """Promote only when every rule passes; otherwise say each rule that did not."""

    def refused(reason: str) -> Decision:
        return Decision(False, [reason], [], challenger.label, incumbent.label)

    if challenger.error:
        return refused(f"{challenger.label} could not be evaluated: {challenger.error}")
    if incumbent.error:
        return refused(f"{incumbent.label} could not be evaluated: {incumbent.error}")

    failures: list[str] = []
    comparisons: list[Comparison] = []
    primary = config.primary
    metric = primary.metric
    if metric not in challenger.metrics or metric not in incumbent.metrics:
        missing = challenger if metric not in challenger.metrics else incumbent
        return refused(f"primary metric {metric} was not measured for {missing.label}")
    change = improvement(
        challenger.metrics[metric],
        incumbent.metrics[metric],
        primary.direction,
        primary.margin_kind,
    )
    won = change >= primary.margin
    comparisons.append(
        Comparison(
            metric,
            "primary",
            primary.direction,
            challenger.metrics[metric],
            incumbent.metrics[metric],
            change,
            primary.margin,
            primary.margin_kind,
            won,
        )
    )
    verdict = (
        f"{_pair(metric, challenger, incumbent)}: improvement "
        f"{_show(change, primary.margin_kind)} {'reaches' if won else 'is below'} the margin "
        f"{_show(primary.margin, primary.margin_kind)}"
    )
    if not won:
        failures.append(verdict)
    for guard in config.guardrails:
        name = guard.metric
        have = (name in challenger.metrics, name in incumbent.metrics)
        if have == (False, False):
            continue  # not measured in this evaluation (e.g. no golden questions were run)
        if not all(have):
            missing = incumbent if have[0] else challenger
            failures.append(f"guardrail {name} was not measured for {missing.label}")
            continue
        change = improvement(
            challenger.metrics[name], incumbent.metrics[name], guard.direction, guard.tolerance_kind
        )
        held = change >= -guard.tolerance - 1e-12
        comparisons.append(
            Comparison(
                name,
                "guardrail",
                guard.direction,
                challenger.metrics[name],
                incumbent.metrics[name],
                change,
                guard.tolerance,
                guard.tolerance_kind,
                held,
            )
        )
        if not held:
            failures.append(
                f"guardrail {_pair(name, challenger, incumbent)} regressed by "
                f"{_show(-change, guard.tolerance_kind)} (tolerance "
                f"{_show(guard.tolerance, guard.tolerance_kind)})"
            )
    if failures:
        return Decision(False, failures, comparisons, challenger.label, incumbent.label)
    guarded = [c.metric for c in comparisons if c.role == "guardrail"]
    reasons = [verdict] + ([f"no guardrail regressed ({', '.join(guarded)})"] if guarded else [])
    return Decision(True, reasons, comparisons, challenger.label, incumbent.label)
