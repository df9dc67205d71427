"""The router's decision rule, with a scripted model behind the real client and classifier.

`LabelBackend` is a test double for the transport that answers `choose` with fixed
probabilities (or fails); the client, the calibration and the classifier are the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dagster_platform.agents.classifier import RouteClassifier, load_routes
from dagster_platform.agents.router import CONTENT_FREE, Router
from dagster_platform.llm.base import Choice, Completion, LLMUnavailable, Message
from dagster_platform.llm.client import LLMClient, ResiliencePolicy

ROUTES = load_routes()


class LabelBackend:
    name = "scripted"
    model = "scripted-model"

    def __init__(self, answer: dict[str, float], prior: dict[str, float] | None = None):
        self.answer = answer
        self.prior = prior or {label: 1 / 3 for label in answer}
        self.questions: list[str] = []
        self.down = False

    def choose(self, messages: Sequence[Message], choices, adapter) -> Choice:
        if self.down:
            raise LLMUnavailable("connection refused by http://vllm:8000")
        asked = messages[-1].content
        probabilities = self.prior if CONTENT_FREE in asked else self.answer
        if CONTENT_FREE not in asked:
            self.questions.append(asked)
        label = max(probabilities, key=probabilities.__getitem__)
        return Choice(
            label, probabilities, Completion(label, self.model, adapter, "s", 1, 1, 0, "stop")
        )

    def loaded_adapters(self) -> list[str]:
        return []


def _router(backend: LabelBackend | None) -> Router:
    client = None if backend is None else LLMClient(backend, ResiliencePolicy(retries=0))
    return Router(ROUTES, RouteClassifier(ROUTES), client)


def test_decisive_keywords_route_without_asking_the_llm() -> None:
    backend = LabelBackend({"infra": 0.98, "data": 0.01, "guide": 0.01})
    decision = _router(backend).route("리소스를 많이 사용하는 spark 잡 3개 추출해줘?")
    assert decision.route == "data" and decision.source == "keywords"
    assert "not asked" in decision.reason and backend.questions == []


def test_a_confident_llm_decides_an_unclear_question() -> None:
    backend = LabelBackend({"infra": 0.02, "data": 0.96, "guide": 0.02})
    decision = _router(backend).route("anything new on the night shift?")
    assert not decision.classification.decisive
    assert (decision.route, decision.source) == ("data", "llm")
    assert decision.to_dict()["llm_probabilities"]["data"] > 0.9


def test_calibration_removes_the_models_lean() -> None:
    lean = {"infra": 0.90, "data": 0.05, "guide": 0.05}
    backend = LabelBackend({"infra": 0.90, "data": 0.05, "guide": 0.05}, prior=lean)
    decision = _router(backend).route("anything new on the night shift?")
    assert decision.source != "llm"  # the model says what it says to every question
    assert decision.llm_probabilities == pytest.approx(
        {"infra": 1 / 3, "data": 1 / 3, "guide": 1 / 3}, abs=1e-3
    )
    assert "unsure" in decision.reason


def test_the_llm_down_falls_back_with_the_reason() -> None:
    backend = LabelBackend({"infra": 1.0, "data": 0.0, "guide": 0.0})
    backend.down = True
    decision = _router(backend).route("anything new on the night shift?")
    assert decision.source in {"keywords", "embedding"}
    assert decision.reason.startswith("LLM unavailable") and "vllm:8000" in decision.reason


def test_without_an_llm_the_seed_questions_route_as_the_seed_says() -> None:
    router = _router(None)
    seed = {
        "현재 클러스터 가동율 알려줘?": "infra",
        "리소스를 많이 사용하는 spark 잡 3개 추출해줘?": "data",
        "클러스터 가동율이 높을때 어떻게 해야되?": "guide",
        "이 중에서 상위 2개 spark 잡 Kill 해줘?": "data",
        "클러스터 사용율이 떨어졌는지 확인해줘?": "infra",
    }
    assert {q: router.route(q).route for q in seed} == seed
