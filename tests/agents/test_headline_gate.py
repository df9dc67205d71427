"""The gate a model's headline passes before it is shown: each failure a small model shows,
named in the verdict."""

from __future__ import annotations

import pytest

from dagster_platform.agents.headline import language_of
from dagster_platform.agents.headline_gate import MAX_CHARS, judge, key_facts

QUESTION = "현재 클러스터 가동율 알려줘?"
EVIDENCE = (
    "etl-prod: workers' CPU 90.6%, memory 77.4% (mean of 14 workers)\n"
    "analytics-prod: workers' CPU 46.7%\nproposed act-6973c0cc4b17 to kill "
    "application_1794712500000_0488"
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("현재 클러스터 가동율 알려줘? etl-prod 90.6%", "echoes the question"),
        ("The busiest cluster is etl-prod at 90.6%.", "not in Korean"),
        ("가장 바쁜 곳은 etl-prod로 CPU 97.2%입니다.", "numbers not in the evidence: 97.2"),
        ("가장 바쁜 곳은 etl-dev입니다.", "ids not in the evidence: etl-dev"),
        ("application_1794712500000_0999 잡이 가장 많이 씁니다.", "ids not in the evidence"),
        ("추천 " * 12, "repeats"),
        ("etl-prod가 바쁩니다. etl-prod가 바쁩니다.", "repeats a sentence"),
        ("가장 바쁩니다. " * 5, "more than 3 sentences"),
        ("가" * (MAX_CHARS + 1), "longer than"),
        ("알려줘, 이러면, 이러면, \ufffd", "cut off inside a character"),
        ("클러스터 가동율", "echoes the question"),
        ("어디세우면 좋을까요, 잘 모르겠습니다", "names nothing from the evidence"),
        ("1. 1.1.1.1: 1.1.1.1.1: 1.1.1.1.1", "not prose"),
        ("어디세우면, 어디세우면, 어디세우면, 90.6%", "repeats the word"),
    ],
)
def test_what_a_small_model_gets_wrong_is_refused_with_the_reason(text: str, reason: str) -> None:
    verdict = judge(text, QUESTION, "ko", EVIDENCE)
    assert not verdict.ok
    assert reason in verdict.reason


def test_english_is_held_to_english_and_a_good_headline_passes() -> None:
    question = "How busy is etl-prod?"
    assert not judge("etl-prod는 90.6%입니다.", question, "en", EVIDENCE).ok
    assert judge("etl-prod's workers run at 90.6% CPU.", question, "en", EVIDENCE).ok
    assert judge(
        "가장 바쁜 클러스터는 etl-prod이며 워커 CPU는 90.6%입니다.", QUESTION, "ko", EVIDENCE
    ).ok


def test_a_third_language_is_answered_in_english() -> None:
    assert language_of("現在のクラスタの使用率は?") == "other"
    assert language_of("클러스터 상태") == "ko" and language_of("cluster status") == "en"
    assert not judge("クラスタは忙しいです 90.6%", "現在の使用率は?", "other", EVIDENCE).ok


def test_the_model_must_say_what_the_composed_headline_leads_with() -> None:
    composed = (
        "가장 바쁜 클러스터는 etl-prod입니다: 워커 CPU 90.6%, 메모리 77.4% (인벤토리 스냅샷 기준)."
    )
    assert key_facts(composed) == ["etl-prod", "90.6", "77.4"]
    beside = judge(
        "analytics-prod의 워커 CPU는 46.7%입니다.", QUESTION, "ko", EVIDENCE, ["etl-prod"]
    )
    assert not beside.ok and "misses the answer's key facts: etl-prod" in beside.reason
    assert not judge("가장 바쁜 곳은 etl-prod, CPU 90.6%.", QUESTION, "ko", EVIDENCE, ["77.4"]).ok
    right = "가장 바쁜 클러스터는 etl-prod, 워커 CPU 90.6%, 메모리 77.4%입니다."
    assert judge(right, QUESTION, "ko", EVIDENCE, key_facts(composed)).ok
