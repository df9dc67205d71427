"""The committed sample domain keeps its promises: sizes, languages, and golden questions
whose expected facts agree with the data they are about."""

import json

import polars as pl
import pytest

from dagster_platform.ingestion.readers import read_source
from dagster_platform.ingestion.sources import RUNBOOKS
from tests.support.state import SAMPLE_DIR

SEED_SCENARIO = [
    ("현재 클러스터 가동율 알려줘?", "infra"),
    ("리소스를 많이 사용하는 spark 잡 3개 추출해줘?", "data"),
    ("클러스터 가동율이 높을때 어떻게 해야되?", "guide"),
    ("이 중에서 상위 2개 spark 잡 Kill 해줘?", "data"),
    ("클러스터 사용율이 떨어졌는지 확인해줘?", "infra"),
]


@pytest.fixture(scope="module")
def golden() -> list[dict]:
    text = (SAMPLE_DIR / "golden_questions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_sample_domain_has_its_promised_size() -> None:
    assert pl.read_csv(SAMPLE_DIR / "clusters.csv").height == 3
    assert 35 <= pl.read_csv(SAMPLE_DIR / "hosts.csv").height <= 45
    assert 180 <= pl.read_csv(SAMPLE_DIR / "spark_jobs.csv").height <= 220
    runbooks = read_source(RUNBOOKS, SAMPLE_DIR).frame
    assert runbooks.height >= 15
    assert set(runbooks["language"]) == {"ko", "en"}
    incidents = pl.read_ndjson(SAMPLE_DIR / "incidents.jsonl")
    assert incidents.height >= 50
    assert set(incidents["language"]) == {"ko", "en"}


def test_golden_questions_cover_every_route_in_both_languages(golden: list[dict]) -> None:
    assert len(golden) >= 40
    pairs = {(q["route"], q["language"]) for q in golden}
    assert pairs == {(r, lang) for r in ("infra", "data", "guide") for lang in ("ko", "en")}


def test_the_seed_scenario_is_in_verbatim_with_its_routes(golden: list[dict]) -> None:
    scenario = sorted(
        (q for q in golden if q["source"] == "seed-004"), key=lambda q: q["scenario_step"]
    )
    assert [(q["question"], q["route"]) for q in scenario] == SEED_SCENARIO


def test_scenario_facts_agree_with_the_data(golden: list[dict]) -> None:
    by_step = {q["scenario_step"]: q for q in golden if q["scenario_step"]}
    jobs = pl.read_csv(SAMPLE_DIR / "spark_jobs.csv")
    top = (
        jobs.filter((pl.col("cluster_id") == "etl-prod") & (pl.col("state") == "RUNNING"))
        .sort("cpu_share_pct", descending=True)["application_id"]
        .to_list()
    )
    assert by_step[2]["expected_facts"] == top[:3]
    assert by_step[4]["expected_facts"] == top[:2]
    hosts = pl.read_csv(SAMPLE_DIR / "hosts.csv")
    busiest = (
        hosts.filter(pl.col("role") == "worker")
        .group_by("cluster_id")
        .agg(pl.col("cpu_usage_pct").mean())
        .sort("cpu_usage_pct", descending=True)
        .row(0)
    )
    assert by_step[1]["expected_facts"] == [busiest[0], f"{busiest[1]:.1f}"]
