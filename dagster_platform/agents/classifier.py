"""The fallback of the LLM router: keywords first, sentence embeddings where keywords are unsure.

Routes are data (data/agents/routes.yaml), so adding a keyword or an exemplar needs no code.
Keywords match without a tokenizer, which Korean would need: a Korean keyword is a substring of
the lower-cased question, so particles may follow it (클러스터가, 잡을); an English one matches
whole words and their plural and -ed/-ing forms, so "how" does not fire inside "show". The
packaged embedder (all-MiniLM-L6-v2) reads English well and Korean barely, so embeddings weigh
less than a clear keyword and mostly decide English questions that name no keyword.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dagster_platform.settings import REPO_ROOT

DEFAULT_ROUTES_FILE = REPO_ROOT / "data" / "agents" / "routes.yaml"

Embed = Callable[[list[str]], np.ndarray]

# Each further keyword of a route counts half as much as the one before, so a pile of topic
# words ("spark job killed by YARN") cannot outvote one intent phrase ("how should I").
KEYWORD_DECAY = 0.5
# Logits per unit of cosine similarity: routes' top-3 similarities differ by about 0.05-0.2, a
# nudge of 0.25-1 next to keyword scores of 1-5: Korean similarities of this model are noise.
EMBEDDING_SCALE = 5.0
# Keyword evidence is decisive when the best route leads the next by at least this much (and the
# embedding did not overturn it), so a caller may trust it over an LLM's label.
DECISIVE_MARGIN = 1.5
TOP_K = 3


@dataclass(frozen=True)
class RouteSpec:
    """One route as declared in routes.yaml; `prior` breaks ties when nothing else can."""

    name: str
    description: str
    keywords: dict[str, float]
    exemplars: tuple[str, ...]
    prior: float = 1.0


@dataclass(frozen=True)
class Classification:
    """The chosen route, which evidence chose it, and a distribution over all routes."""

    route: str
    source: str
    scores: dict[str, float]
    decisive: bool


def _problem(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _keywords(path: Path, name: str, raw: Any) -> dict[str, float]:
    """A mapping keyword → weight, or a list of keywords of weight 1."""
    if isinstance(raw, list):
        raw = dict.fromkeys(raw, 1.0)
    if not isinstance(raw, dict) or not raw:
        raise _problem(path, f"route {name!r}: keywords must be a non-empty mapping or list")
    keywords: dict[str, float] = {}
    for keyword, weight in raw.items():
        if not isinstance(keyword, str) or not keyword.strip():
            raise _problem(path, f"route {name!r}: keyword {keyword!r} is not a non-empty string")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise _problem(path, f"route {name!r}: keyword {keyword!r} needs a positive weight")
        if keyword != keyword.lower():
            raise _problem(path, f"route {name!r}: keyword {keyword!r} must be lower-case")
        keywords[keyword] = float(weight)
    return keywords


def _route(path: Path, name: str, raw: Any) -> RouteSpec:
    if not isinstance(raw, dict):
        raise _problem(path, f"route {name!r} must be a mapping")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise _problem(path, f"route {name!r} needs a description")
    exemplars = raw.get("exemplars")
    if (
        not isinstance(exemplars, list)
        or not exemplars
        or not all(isinstance(text, str) and text.strip() for text in exemplars)
    ):
        raise _problem(path, f"route {name!r}: exemplars must be a non-empty list of questions")
    prior = raw.get("prior", 1.0)
    if isinstance(prior, bool) or not isinstance(prior, int | float) or prior <= 0:
        raise _problem(path, f"route {name!r}: prior must be a positive number")
    return RouteSpec(
        name=name,
        description=" ".join(description.split()),
        keywords=_keywords(path, name, raw.get("keywords")),
        exemplars=tuple(text.strip() for text in exemplars),
        prior=float(prior),
    )


def load_routes(path: Path | None = None) -> dict[str, RouteSpec]:
    """The routes of `path` (default data/agents/routes.yaml); ValueError names file and fault."""
    path = path or DEFAULT_ROUTES_FILE
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _problem(path, f"cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise _problem(path, f"not valid YAML: {exc}") from exc
    routes = document.get("routes") if isinstance(document, dict) else None
    if not isinstance(routes, dict) or not routes:
        raise _problem(path, "needs a non-empty `routes` mapping of route name to route")
    specs = {str(name): _route(path, str(name), raw) for name, raw in routes.items()}
    owners: dict[str, str] = {}
    for spec in specs.values():
        for keyword in spec.keywords:
            if keyword in owners:  # one match could only count for one of them
                raise _problem(
                    path, f"keyword {keyword!r} is in both {owners[keyword]!r} and {spec.name!r}"
                )
            owners[keyword] = spec.name
    return specs


def _pattern(keyword: str) -> re.Pattern[str]:
    """Korean: a plain substring. English: whole words, plural and -ed/-ing forms too."""
    escaped = re.escape(keyword)
    if keyword.isascii():
        return re.compile(rf"(?<![a-z0-9]){escaped}(?:s|es|d|ed|ing)?(?![a-z0-9])")
    return re.compile(escaped)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


class RouteClassifier:
    """Routes a question by keyword scores, refined by embedding similarity to the exemplars."""

    def __init__(self, routes: Mapping[str, RouteSpec], embed: Embed | None = None) -> None:
        if not routes:
            raise ValueError("a classifier needs at least one route")
        self.routes = dict(routes)
        self.names = list(self.routes)
        self.embed = embed
        self._patterns = [
            (name, keyword, weight, _pattern(keyword))
            for name, spec in self.routes.items()
            for keyword, weight in spec.keywords.items()
        ]
        self._log_priors = np.array([math.log(spec.prior) for spec in self.routes.values()])

    @cached_property
    def _exemplar_vectors(self) -> list[np.ndarray]:
        """Every route's exemplar vectors, encoded in one call the first time they are needed."""
        assert self.embed is not None
        texts = [text for spec in self.routes.values() for text in spec.exemplars]
        vectors = np.asarray(self.embed(texts), dtype=np.float32)
        split = np.cumsum([len(spec.exemplars) for spec in self.routes.values()])[:-1]
        return np.split(vectors, split)

    def keyword_hits(self, question: str) -> dict[str, list[str]]:
        """The keywords found per route; a keyword inside a longer match does not count again."""
        text = question.lower()
        found = [
            (match.start(), match.end(), name, keyword, weight)
            for name, keyword, weight, pattern in self._patterns
            for match in pattern.finditer(text)
        ]
        found.sort(key=lambda hit: (hit[0] - hit[1], -hit[4]))  # longest first, then heaviest
        taken: list[tuple[int, int]] = []
        hits: dict[str, list[str]] = {name: [] for name in self.names}
        for start, end, name, keyword, _ in found:
            if any(start < other_end and other_start < end for other_start, other_end in taken):
                continue
            taken.append((start, end))
            if keyword not in hits[name]:
                hits[name].append(keyword)
        return hits

    def keyword_scores(self, question: str) -> np.ndarray:
        """Per route: its heaviest keyword, plus each next one at half the weight before."""
        scores = []
        for name, keywords in self.keyword_hits(question).items():
            weights = sorted((self.routes[name].keywords[k] for k in keywords), reverse=True)
            scores.append(sum(w * KEYWORD_DECAY**i for i, w in enumerate(weights)))
        return np.array(scores)

    def embedding_scores(self, question: str) -> np.ndarray:
        """Per route: the mean cosine similarity of the question to its closest exemplars."""
        assert self.embed is not None
        exemplars = self._exemplar_vectors
        query = np.asarray(self.embed([question]), dtype=np.float32)[0]
        scores = []
        for vectors in exemplars:
            similarities = np.sort(vectors @ query)[::-1][:TOP_K]
            scores.append(float(similarities.mean()))
        return np.array(scores)

    def classify(self, question: str) -> Classification:
        """The route for `question`; the prior's favourite, undecided, when nothing points."""
        keywords = self.keyword_scores(question)
        ranked = np.sort(keywords)[::-1]
        margin = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
        keyword_route = int(np.argmax(keywords)) if margin > 0 else None
        logits = keywords + self._log_priors
        if self.embed is not None and question.strip():
            logits = logits + EMBEDDING_SCALE * self.embedding_scores(question)
            source = "embedding"
        else:
            source = "keywords"
        best = int(np.argmax(logits))
        if best == keyword_route:
            source = "keywords"
        probabilities = _softmax(logits)
        return Classification(
            route=self.names[best],
            source=source,
            scores={name: float(p) for name, p in zip(self.names, probabilities, strict=True)},
            decisive=bool(margin >= DECISIVE_MARGIN and best == keyword_route),
        )
