"""The promotion gate: its configuration file and the rule, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_platform.finetune.gate import (
    DEFAULT_GATE,
    CandidateMetrics,
    GateConfig,
    GateConfigError,
    decide,
    improvement,
)

GATE = """
primary: {metric: eval_loss, direction: lower, margin: 0.05, margin_kind: relative}
guardrails:
  - {metric: rouge_l, direction: higher, tolerance: 0.02}
  - {metric: routing_accuracy, direction: higher}
"""


def _config(tmp_path: Path, text: str = GATE) -> GateConfig:
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    return GateConfig.load(path)


def _candidate(name: str, version: str | None, **metrics: float) -> CandidateMetrics:
    return CandidateMetrics(name, version, metrics)


CHAMPION = _candidate("champion", "1", eval_loss=2.0, rouge_l=0.40, routing_accuracy=0.8)


def test_the_shipped_gate_loads() -> None:
    config = GateConfig.load(DEFAULT_GATE)
    assert config.primary.metric == "eval_loss" and config.primary.margin_kind == "relative"
    assert {g.metric for g in config.guardrails} >= {"rouge_l", "routing_accuracy", "grounding"}
    assert config.evaluation.agent_cases > 0 and config.min_examples > 0


def test_promotes_when_better_by_the_margin(tmp_path: Path) -> None:
    challenger = _candidate("challenger", "2", eval_loss=1.8, rouge_l=0.39, routing_accuracy=0.8)
    decision = decide(challenger, CHAMPION, _config(tmp_path))
    assert decision.promote
    assert decision.reasons[0].startswith("eval_loss 1.8000 (challenger v2) vs 2.0000")
    assert "improvement 10.0% reaches the margin 5.0%" in decision.reasons[0]
    assert "no guardrail regressed (rouge_l, routing_accuracy)" in decision.reasons[1]
    assert [c.passed for c in decision.comparisons] == [True, True, True]


def test_refuses_within_the_margin(tmp_path: Path) -> None:
    challenger = _candidate("challenger", "2", eval_loss=1.95, rouge_l=0.5, routing_accuracy=0.9)
    decision = decide(challenger, CHAMPION, _config(tmp_path))
    assert not decision.promote
    assert decision.reasons == [
        "eval_loss 1.9500 (challenger v2) vs 2.0000 (champion v1): improvement 2.5% is below "
        "the margin 5.0%"
    ]


def test_an_absolute_margin(tmp_path: Path) -> None:
    config = _config(
        tmp_path, "primary: {metric: rouge_l, direction: higher, margin: 0.05}\nguardrails: []"
    )
    assert decide(_candidate("challenger", "2", rouge_l=0.46), CHAMPION, config).promote
    assert not decide(_candidate("challenger", "2", rouge_l=0.44), CHAMPION, config).promote


def test_refuses_when_a_guardrail_regresses(tmp_path: Path) -> None:
    challenger = _candidate("challenger", "2", eval_loss=1.0, rouge_l=0.37, routing_accuracy=0.7)
    decision = decide(challenger, CHAMPION, _config(tmp_path))
    assert not decision.promote
    assert decision.reasons == [
        "guardrail rouge_l 0.3700 (challenger v2) vs 0.4000 (champion v1) regressed by 0.0300 "
        "(tolerance 0.0200)",
        "guardrail routing_accuracy 0.7000 (challenger v2) vs 0.8000 (champion v1) regressed by "
        "0.1000 (tolerance 0.0000)",
    ]
    primary, rouge, routing = decision.comparisons
    assert primary.passed and not rouge.passed and not routing.passed


def test_a_regression_within_the_tolerance_passes(tmp_path: Path) -> None:
    challenger = _candidate("challenger", "2", eval_loss=1.0, rouge_l=0.385, routing_accuracy=0.8)
    assert decide(challenger, CHAMPION, _config(tmp_path)).promote


def test_a_challenger_that_failed_to_load_is_never_promoted(tmp_path: Path) -> None:
    failed = CandidateMetrics("challenger", "2", {}, "adapter 'x' did not load: truncated")
    decision = decide(failed, CHAMPION, _config(tmp_path))
    assert not decision.promote
    assert decision.reasons == [
        "challenger v2 could not be evaluated: adapter 'x' did not load: truncated"
    ]


def test_against_the_base_model_and_unmeasured_metrics(tmp_path: Path) -> None:
    config = _config(tmp_path)
    base = _candidate("base", None, eval_loss=3.0, rouge_l=0.1)
    challenger = _candidate("challenger", "1", eval_loss=2.0, rouge_l=0.3)
    decision = decide(challenger, base, config)  # routing was measured for neither: skipped
    assert decision.promote and decision.incumbent == "base model"
    lopsided = _candidate("challenger", "1", eval_loss=2.0, rouge_l=0.3, routing_accuracy=1.0)
    assert decide(base, lopsided, config).reasons[-1] == (
        "guardrail routing_accuracy was not measured for base model"
    )
    unmeasured = decide(_candidate("challenger", "1", rouge_l=0.9), base, config)
    assert unmeasured.reasons == ["primary metric eval_loss was not measured for challenger v1"]


def test_improvement_sign_and_kinds() -> None:
    assert improvement(1.5, 2.0, "lower", "relative") == pytest.approx(0.25)
    assert improvement(0.5, 0.4, "higher", "absolute") == pytest.approx(0.1)
    assert improvement(0.3, 0.4, "higher", "absolute") == pytest.approx(-0.1)
    assert improvement(0.2, 0.0, "higher", "relative") == float("inf")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("primary: [not, a, mapping", "not valid YAML"),
        ("- a list", "expected a mapping"),
        (GATE + "surprise: 1\n", "surprise: Extra inputs are not permitted"),
        (
            "primary: {metric: accuracy, direction: higher, margin: 0.1}",
            "primary: Value error, unknown metric 'accuracy'",
        ),
        (
            "primary: {metric: eval_loss, direction: higher, margin: 0.1}",
            "eval_loss is better lower, not higher",
        ),
        (
            "primary: {metric: eval_loss, direction: lower, margin: -1}",
            "primary.margin: Input should be greater than or equal to 0",
        ),
        (
            "primary: {metric: eval_loss, direction: lower, margin: 0.1, margin_kind: percent}",
            "primary.margin_kind: Input should be 'absolute' or 'relative'",
        ),
        (GATE + "evaluation: {max_new_tokens: 0}\n", "evaluation.max_new_tokens: Input should be"),
        ("guardrails: []", "primary: Field required"),
    ],
)
def test_bad_gate_files_name_the_file_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(GateConfigError, match=r"gate\.yaml: ") as error:
        _config(tmp_path, text)
    assert message in str(error.value)


def test_a_missing_gate_file(tmp_path: Path) -> None:
    with pytest.raises(GateConfigError, match="no gate configuration there"):
        GateConfig.load(tmp_path / "absent.yaml")
