"""The in-process transformers + peft backend, on a tiny model built in code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dagster_platform.llm.base import AdapterLoadError, GenerationConfig, LLMRequestError, Message
from dagster_platform.llm.transformers_backend import TransformersBackend, first_json_object
from tests.support.tiny_models import build_tiny_adapter, build_tiny_llm

QUESTION = [Message("system", "You answer briefly."), Message("user", "How busy is cluster-a?")]
GREEDY = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_llm(root / "base")
    return (
        base,
        build_tiny_adapter(base, root / "a1", seed=1),
        build_tiny_adapter(base, root / "a2", seed=2),
    )


def test_chat_reports_what_answered_and_is_reproducible(tiny: tuple[Path, Path, Path]) -> None:
    backend = TransformersBackend(str(tiny[0]))
    first = backend.chat(QUESTION, GREEDY)
    assert first.backend == "transformers" and first.model == "base" and first.adapter is None
    assert first.prompt_tokens > 0 and 0 < first.completion_tokens <= 8
    assert first.finish_reason in {"stop", "length"}
    assert backend.chat(QUESTION, GREEDY).text == first.text


def test_batch_answers_in_order_like_single_calls(tiny: tuple[Path, Path, Path]) -> None:
    backend = TransformersBackend(str(tiny[0]))
    short = [Message("user", "Hi")]
    batch = backend.chat_batch([QUESTION, short], GREEDY)
    assert [c.text for c in batch] == [
        backend.chat(QUESTION, GREEDY).text,
        backend.chat(short, GREEDY).text,
    ]
    assert backend.chat_batch([], GREEDY) == []


def test_choose_returns_a_distribution_over_the_choices(tiny: tuple[Path, Path, Path]) -> None:
    backend = TransformersBackend(str(tiny[0]))
    choice = backend.choose(QUESTION, ["infra", "data", "guide"])
    assert choice.label in {"infra", "data", "guide"}
    assert choice.probabilities is not None
    assert math.isclose(sum(choice.probabilities.values()), 1.0, abs_tol=1e-4)
    assert choice.probabilities[choice.label] == max(choice.probabilities.values())
    with pytest.raises(LLMRequestError, match="at least one choice"):
        backend.choose(QUESTION, [])


def test_adapters_swap_without_reloading_the_base_model(tiny: tuple[Path, Path, Path]) -> None:
    base, first_adapter, second_adapter = tiny
    backend = TransformersBackend(str(base))
    plain = backend.chat(QUESTION, GREEDY).text
    weights = backend.torch_model.get_input_embeddings().weight

    backend.load_adapter("v1", first_adapter)
    backend.load_adapter("v2", second_adapter)
    assert backend.loaded_adapters() == ["v1", "v2"]
    assert backend.torch_model.get_input_embeddings().weight is weights  # same tensors, no reload
    with_first = backend.chat(QUESTION, GREEDY, adapter="v1")
    assert with_first.adapter == "v1"
    logits_base = backend.choose(QUESTION, ["a", "b"]).probabilities
    logits_v1 = backend.choose(QUESTION, ["a", "b"], adapter="v1").probabilities
    assert logits_base != logits_v1  # the adapter changes the model's output
    assert backend.chat(QUESTION, GREEDY).text == plain  # the base still answers as before

    backend.unload_adapter("v1")
    assert backend.loaded_adapters() == ["v2"]
    with pytest.raises(LLMRequestError, match="not loaded"):
        backend.chat(QUESTION, GREEDY, adapter="v1")
    backend.unload_adapter("v2")
    assert backend.loaded_adapters() == []
    assert backend.chat(QUESTION, GREEDY).text == plain


def test_a_bad_adapter_is_refused_and_nothing_changes(
    tiny: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    backend = TransformersBackend(str(tiny[0]))
    backend.load_adapter("good", tiny[1])
    with pytest.raises(AdapterLoadError, match=r"no adapter_config\.json"):
        backend.load_adapter("empty", tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": "eight"}')
    with pytest.raises(AdapterLoadError, match="did not load"):
        backend.load_adapter("broken", broken)
    with pytest.raises(AdapterLoadError, match="already loaded"):
        backend.load_adapter("good", tiny[1])
    assert backend.loaded_adapters() == ["good"]
    assert backend.chat(QUESTION, GREEDY, adapter="good").adapter == "good"


def test_a_missing_base_model_names_the_fix(tmp_path: Path) -> None:
    from dagster_platform.llm.base import LLMUnavailable

    backend = TransformersBackend(str(tmp_path / "nowhere"))
    with pytest.raises(LLMUnavailable, match="models prepare"):
        backend.chat(QUESTION, GREEDY)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Sure! {"route": "data"} done', '{"route": "data"}'),
        ("```json\n[1, 2]\n```", "[1, 2]"),
        ('{broken {"a": 1}', '{"a": 1}'),
        ("no json here", None),
    ],
)
def test_first_json_object(text: str, expected: str | None) -> None:
    assert first_json_object(text) == expected
