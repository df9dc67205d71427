"""Which agent answers: the LLM picks a constrained label; a keyword and embedding classifier
backs it up.

When the question's keywords are decisive, the classifier routes it and the LLM is not asked
(a call saved). Otherwise the LLM's label stands unless (a) it is not a valid label or the LLM
is down, (b) the model is unsure (its calibrated probability is below `min_confidence`), or
(c) the classifier is confident (at least `classifier_trust`) of another route. A small base
model leans to one label whatever the question; dividing its probabilities by those it gives a
content-free question ("contextual calibration", Zhao et al. 2021) removes that lean before
the threshold applies. A fine-tuned adapter that routes well takes over the unclear cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster_platform.agents.classifier import Classification, RouteClassifier, RouteSpec
from dagster_platform.llm.base import LLMError, Message
from dagster_platform.llm.client import LLMClient

CONTENT_FREE = "N/A"
FEW_SHOT = 2  # exemplars per route in the prompt


@dataclass(frozen=True)
class RouteDecision:
    route: str
    source: str  # "llm", or the classifier's "keywords" / "embedding"
    classification: Classification
    llm_label: str | None = None
    llm_probabilities: dict[str, float] | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "source": self.source,
            "reason": self.reason,
            "llm_label": self.llm_label,
            "llm_probabilities": self.llm_probabilities,
            "classifier_route": self.classification.route,
            "classifier_source": self.classification.source,
            "classifier_scores": self.classification.scores,
            "classifier_decisive": self.classification.decisive,
        }


def routing_prompt(routes: Mapping[str, RouteSpec], question: str) -> list[Message]:
    lines = ["Route the operator's question to the team that answers it."]
    lines += [f"{name}: {spec.description.strip()}" for name, spec in routes.items()]
    lines.append("Examples:")
    for name, spec in routes.items():
        lines += [f"Q: {exemplar} -> {name}" for exemplar in spec.exemplars[:FEW_SHOT]]
    lines.append(f"Answer with one word: {', '.join(routes)}.")
    return [Message("system", "\n".join(lines)), Message("user", f"Q: {question} ->")]


class Router:
    def __init__(
        self,
        routes: Mapping[str, RouteSpec],
        classifier: RouteClassifier,
        llm: LLMClient | None,
        min_confidence: float = 0.9,
        classifier_trust: float = 0.6,
    ):
        self.routes = dict(routes)
        self.labels = list(routes)
        self.classifier = classifier
        self.llm = llm
        self.min_confidence = min_confidence
        self.classifier_trust = classifier_trust
        self._priors: dict[str | None, dict[str, float] | None] = {}

    def _prior(self) -> dict[str, float] | None:
        """The model's lean on a content-free question, once per served adapter."""
        adapter = self.llm.served.adapter
        key = None if adapter is None else adapter.name
        if key not in self._priors:
            choice = self.llm.choose(routing_prompt(self.routes, CONTENT_FREE), self.labels)
            self._priors[key] = choice.probabilities
        return self._priors[key]

    def calibrated(self, probabilities: dict[str, float]) -> dict[str, float]:
        prior = self._prior()
        if not prior:
            return probabilities
        raw = {label: probabilities[label] / max(prior[label], 1e-9) for label in self.labels}
        total = sum(raw.values())
        return {label: round(value / total, 6) for label, value in raw.items()}

    def route(self, question: str) -> RouteDecision:
        classification = self.classifier.classify(question)
        fallback = RouteDecision(classification.route, classification.source, classification)
        if self.llm is None:
            return _with(fallback, reason="no LLM configured")
        if classification.decisive:
            return _with(fallback, reason="decisive keywords; the LLM was not asked")
        try:
            choice = self.llm.choose(routing_prompt(self.routes, question), self.labels)
            probabilities = self.calibrated(choice.probabilities) if choice.probabilities else None
        except LLMError as exc:
            return _with(fallback, reason=f"LLM unavailable: {exc}")
        label = choice.label
        if probabilities:
            label = max(probabilities, key=probabilities.__getitem__)
        seen = {"llm_label": label, "llm_probabilities": probabilities}
        if probabilities and probabilities[label] < self.min_confidence:
            why = f"LLM unsure ({probabilities[label]:.2f} < {self.min_confidence})"
            return _with(fallback, **seen, reason=why)
        confidence = classification.scores.get(classification.route, 0.0)
        if classification.route != label and confidence >= self.classifier_trust:
            why = f"classifier confident of {classification.route} ({confidence:.2f}), not {label}"
            return _with(fallback, **seen, reason=why)
        return RouteDecision(label, "llm", classification, **seen, reason="LLM label")


def _with(decision: RouteDecision, **changes: Any) -> RouteDecision:
    return RouteDecision(**{**decision.__dict__, **changes})
