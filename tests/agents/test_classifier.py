"""The route classifier: routes.yaml, keyword matching, the golden routing set with and without
the real packaged embedder (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from dagster_platform.agents.classifier import (
    Classification,
    RouteClassifier,
    RouteSpec,
    load_routes,
)
from dagster_platform.knowledge.embeddings import Embedder
from dagster_platform.settings import REPO_ROOT

GOLDEN_FILE = REPO_ROOT / "data" / "golden" / "routing.yaml"
SAMPLE_GOLDEN_FILE = REPO_ROOT / "data" / "sample" / "golden_questions.jsonl"
GOLDEN = yaml.safe_load(GOLDEN_FILE.read_text(encoding="utf-8"))["questions"]
SEEDS = [
    ("현재 클러스터 가동율 알려줘?", "infra"),
    ("리소스를 많이 사용하는 spark 잡 3개 추출해줘?", "data"),
    ("클러스터 가동율이 높을때 어떻게 해야되?", "guide"),
    ("이 중에서 상위 2개 spark 잡 Kill 해줘?", "data"),
    ("클러스터 사용율이 떨어졌는지 확인해줘?", "infra"),
]
KEYWORD_ONLY_FLOOR = 0.9  # observed 1.0; keywords are the part that reads Korean
EMBEDDING_FLOOR = 0.95  # observed 0.98


def normalised(question: str) -> str:
    return re.sub(r"[\s?.!]+", " ", question.casefold()).strip()


def accuracy(classifier: RouteClassifier) -> tuple[float, list[str]]:
    misses = []
    for item in GOLDEN:
        got = classifier.classify(item["question"]).route
        if got != item["route"]:
            misses.append(f"{item['question']!r}: {got}, want {item['route']}")
    return 1 - len(misses) / len(GOLDEN), misses


def assert_distribution(result: Classification, routes: dict[str, RouteSpec]) -> None:
    assert set(result.scores) == set(routes)
    assert sum(result.scores.values()) == pytest.approx(1.0)
    assert max(result.scores, key=result.scores.__getitem__) == result.route


@pytest.fixture(scope="module")
def routes() -> dict[str, RouteSpec]:
    return load_routes()


@pytest.fixture(scope="module")
def keyword_classifier(routes: dict[str, RouteSpec]) -> RouteClassifier:
    return RouteClassifier(routes)


@pytest.fixture(scope="module")
def embedding_classifier(
    routes: dict[str, RouteSpec], tmp_path_factory: pytest.TempPathFactory
) -> RouteClassifier:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        embedder = Embedder.from_name(None, tmp_path_factory.mktemp("models"))
        embedder.encode(["warm up"])
    return RouteClassifier(routes, embedder.encode)


class RouteVectors:
    """A fake embedder: one axis per route, chosen by a marker word; counts the texts asked."""

    def __init__(self, markers: dict[str, str]) -> None:
        self.markers = markers
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        rows = np.full((len(texts), len(self.markers) + 1), 0.1, dtype=np.float32)
        for row, text in zip(rows, texts, strict=True):
            for axis, marker in enumerate(self.markers.values()):
                if marker in text.lower():
                    row[axis] = 1.0
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_routes_load_as_declared(routes: dict[str, RouteSpec]) -> None:
    assert list(routes) == ["infra", "data", "guide"]
    for name, spec in routes.items():
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        assert len(spec.exemplars) >= 12
        assert all(keyword == keyword.lower() for keyword in spec.keywords)
        assert any(re.search("[가-힣]", text) for text in spec.exemplars)
        assert any(text.isascii() for text in spec.exemplars)
    assert max(routes.values(), key=lambda spec: spec.prior).name == "guide"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("routes: [unclosed", "not valid YAML"),
        ("something: else\n", "routes"),
        ("routes:\n  infra:\n    keywords: {cpu: 1}\n    exemplars: [a]\n", "description"),
        (
            "routes:\n  infra:\n    description: d\n    keywords: {cpu: 0}\n    exemplars: [a]\n",
            "positive weight",
        ),
        (
            "routes:\n  infra:\n    description: d\n    keywords: {CPU: 1}\n    exemplars: [a]\n",
            "lower-case",
        ),
        (
            "routes:\n  infra:\n    description: d\n    keywords: [cpu]\n    exemplars: []\n",
            "exemplars",
        ),
        (
            "routes:\n"
            "  infra: {description: d, keywords: [cpu], exemplars: [a]}\n"
            "  data: {description: d, keywords: [cpu], exemplars: [b]}\n",
            "'cpu' is in both 'infra' and 'data'",
        ),
    ],
)
def test_a_malformed_routes_file_is_named_with_its_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "broken-routes.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"broken-routes\.yaml.*{problem}"):
        load_routes(path)


def test_a_missing_routes_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no-routes\.yaml.*cannot read"):
        load_routes(tmp_path / "no-routes.yaml")


def test_no_golden_question_is_an_exemplar(routes: dict[str, RouteSpec]) -> None:
    golden = {normalised(item["question"]) for item in GOLDEN}
    golden |= {
        normalised(json.loads(line)["question"])
        for line in SAMPLE_GOLDEN_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    exemplars = {normalised(text) for spec in routes.values() for text in spec.exemplars}
    assert not golden & exemplars


def test_the_golden_set_covers_the_seed_both_languages_and_all_routes(
    routes: dict[str, RouteSpec],
) -> None:
    seeds = [(item["question"], item["route"]) for item in GOLDEN if item.get("seed")]
    assert seeds == SEEDS
    assert {item["route"] for item in GOLDEN} == set(routes)
    korean = sum(bool(re.search("[가-힣]", item["question"])) for item in GOLDEN)
    assert 0.4 <= korean / len(GOLDEN) <= 0.6
    assert len({normalised(item["question"]) for item in GOLDEN}) == len(GOLDEN) >= 40


@pytest.mark.parametrize(("question", "route"), SEEDS)
def test_seed_questions_route_by_keywords_alone(
    keyword_classifier: RouteClassifier, routes: dict[str, RouteSpec], question: str, route: str
) -> None:
    result = keyword_classifier.classify(question)
    assert (result.route, result.source) == (route, "keywords")
    assert_distribution(result, routes)


def test_korean_keywords_match_with_particles_and_english_ones_as_words(
    keyword_classifier: RouteClassifier,
) -> None:
    hits = keyword_classifier.keyword_hits("클러스터가 느려서 잡을 확인했어")
    assert "클러스터" in hits["infra"] and "잡" in hits["data"]
    assert keyword_classifier.keyword_hits("Show me the jobs")["guide"] == []
    assert "job" in keyword_classifier.keyword_hits("Show me the jobs")["data"]
    assert keyword_classifier.keyword_hits("How do I kill it?")["guide"] == ["how do"]
    assert keyword_classifier.keyword_hits("어떻게 해야 돼?")["guide"] == ["어떻게 해야"]


def test_asking_how_outweighs_the_topic(keyword_classifier: RouteClassifier) -> None:
    result = keyword_classifier.classify(
        "Spark job containers on the cluster are killed by YARN for memory, how should I tune it?"
    )
    assert (result.route, result.source) == ("guide", "keywords")


def test_no_keyword_and_no_embedder_falls_back_to_the_prior(
    keyword_classifier: RouteClassifier, routes: dict[str, RouteSpec]
) -> None:
    for question in ("", "   ", "hello there"):
        result = keyword_classifier.classify(question)
        assert (result.route, result.source, result.decisive) == ("guide", "keywords", False)
        assert_distribution(result, routes)


def test_without_keywords_the_embedding_decides_and_exemplars_are_encoded_once() -> None:
    routes = {
        name: RouteSpec(name, name, {keyword: 2.0}, (f"{marker} a", f"{marker} b"), prior)
        for name, keyword, marker, prior in (
            ("infra", "cpu", "alpha", 0.3),
            ("data", "spark", "beta", 0.3),
            ("guide", "how do", "gamma", 0.4),
        )
    }
    embed = RouteVectors({"infra": "alpha", "data": "beta", "guide": "gamma"})
    classifier = RouteClassifier(routes, embed)
    assert embed.calls == []  # nothing is encoded before the first question
    result = classifier.classify("CPU of alpha")
    assert (result.route, result.source, result.decisive) == ("infra", "keywords", True)
    result = classifier.classify("what about betamax")  # "spark" matches no part of a word
    assert (result.route, result.source, result.decisive) == ("data", "embedding", False)
    assert_distribution(result, routes)
    result = classifier.classify("sparkle of beta")
    assert (result.route, result.source) == ("data", "embedding")
    empty = classifier.classify("")
    assert (empty.route, empty.source, empty.decisive) == ("guide", "keywords", False)
    assert embed.calls == [6, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.parametrize(("question", "route"), SEEDS)
@pytest.mark.models
def test_seed_questions_route_with_the_embedder(
    embedding_classifier: RouteClassifier, routes: dict[str, RouteSpec], question: str, route: str
) -> None:
    result = embedding_classifier.classify(question)
    assert result.route == route
    assert_distribution(result, routes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "route"),
    [
        ("Are the machines on etl-prod ok?", "infra"),
        ("What went wrong with the namenode last month and what did we do?", "guide"),
    ],
)
@pytest.mark.models
def test_a_question_without_keywords_is_routed_by_the_real_embedding(
    embedding_classifier: RouteClassifier, question: str, route: str
) -> None:
    assert not any(embedding_classifier.keyword_hits(question).values())
    result = embedding_classifier.classify(question)
    assert (result.route, result.source, result.decisive) == (route, "embedding", False)


def test_golden_accuracy_with_keywords_only(keyword_classifier: RouteClassifier) -> None:
    score, misses = accuracy(keyword_classifier)
    print(f"keyword-only routing accuracy: {score:.3f} on {len(GOLDEN)} questions")
    assert score >= KEYWORD_ONLY_FLOOR, misses


@pytest.mark.slow
@pytest.mark.models
def test_golden_accuracy_with_the_packaged_embedder(
    embedding_classifier: RouteClassifier,
) -> None:
    score, misses = accuracy(embedding_classifier)
    print(f"keyword+embedding routing accuracy: {score:.3f} on {len(GOLDEN)} questions")
    assert score >= EMBEDDING_FLOOR, misses
