"""API keys and an assistant without an LLM, for the HTTP API's tests."""

from __future__ import annotations

from dagster_platform.agents.assistant import Assistant
from dagster_platform.settings import Settings

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789abc"}


ALICE = {"X-API-Key": KEYS["alice"]}


QUESTION = "리소스를 많이 사용하는 spark 잡 3개 추출해줘?"


def no_llm(settings: Settings) -> Assistant:
    return Assistant.open(settings, use_llm=False)
