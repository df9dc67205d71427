"""The answers benchmark's composed pass on the frozen sample, the seed scenario's kill
approved through a real embedded broker: every figure the issue names is measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.answers import CHECKS, measure
from benchmarks.common import private_broker
from dagster_platform.kafka.topics import ensure_topics
from tests.support.state import SAMPLE_DIR, live_settings


@pytest.mark.kafka
@pytest.mark.models
def test_the_composed_headlines_are_right_in_language_and_numbers(tmp_path: Path) -> None:
    settings = live_settings(tmp_path / "live", SAMPLE_DIR)
    with private_broker() as broker:
        ensure_topics(broker.bootstrap_servers)
        figures = measure(
            tmp_path / "frozen", settings, False, broker.bootstrap_servers, embed=False
        )
    assert figures["questions"] == 54
    assert figures["numbers_checked"] == len(CHECKS) and figures["numbers_correct"] == 1.0
    assert figures["language_match"] == 1.0 and figures["empty_answers"] == 0
    assert figures["headline_correct"] >= 0.85  # guide misses are retrieval's (see README)
    assert [a.split(": ")[1] for a in figures["approvals"]] == ["executed", "executed"]
