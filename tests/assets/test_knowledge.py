"""The knowledge group materialized through Dagster on a real DuckDB file, a real chroma folder,
the packaged embedding model and a real MLflow store: incremental embedding, a deleted and a
corrupted store, a missing model, and retrieval measured on the golden questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import pytest
from typer.testing import CliRunner

from assets.knowledge import knowledge_assets
from assets.ontology import ontology_assets
from dagster_platform.cli import app
from dagster_platform.definitions import defs
from dagster_platform.knowledge.documents import Chunk
from dagster_platform.knowledge.evaluation import (
    GoldenQuestion,
    evaluate,
    score_of,
    scores_table,
)
from dagster_platform.knowledge.retriever import Hit
from dagster_platform.settings import Settings
from resources import (
    DataFolderResource,
    MLflowResource,
    OntologyResource,
    StateResource,
    WarehouseResource,
)
from resources.knowledge import KnowledgeResource
from tests.support.results import checks, materialized, metadata
from tests.support.state import ONTOLOGY_DIR, SAMPLE_DIR, isolate_environment

pytestmark = [pytest.mark.slow, pytest.mark.models]


def run(
    warehouse: Path,
    state: Path,
    data: Path,
    selection: list[str] | None = None,
    model: str | None = None,
):
    return dg.materialize(
        [*ontology_assets(Settings(ontology_dir=ONTOLOGY_DIR)), *knowledge_assets],
        selection=selection,
        resources={
            "warehouse": WarehouseResource(database=str(warehouse)),
            "ontology": OntologyResource(folder=str(ONTOLOGY_DIR)),
            "data_folder": DataFolderResource(folder=str(data)),
            "state": StateResource(folder=str(state)),
            "mlflow": MLflowResource(),
            "knowledge": KnowledgeResource(
                chroma_path=str(state / "chroma"),
                lexical_path=str(state / "bm25"),
                embedding_model=model,
            ),
        },
        raise_on_error=False,
    )


EMBED = ["document_chunks", "chunk_embeddings"]


KNOWLEDGE_STATE = ("chroma", "bm25")


@pytest.fixture(scope="module")
def built_template(sample_warehouse_template: Path, tmp_path_factory) -> Path:
    """The ontology and the knowledge base built once from the sample: embedding every chunk
    takes half a minute, so the tests that change them each take a copy."""
    root = tmp_path_factory.mktemp("knowledge")
    warehouse, state, data = root / "warehouse.duckdb", root / "state", root / "data"
    shutil.copyfile(sample_warehouse_template, warehouse)
    shutil.copytree(SAMPLE_DIR, data)
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, state)
        result = run(warehouse, state, data)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return root


@pytest.fixture
def built(built_template: Path, sample_warehouse: Path, state_dir: Path) -> Path:
    """A private copy of the built warehouse and knowledge stores; the warehouse's path."""
    shutil.copyfile(built_template / "warehouse.duckdb", sample_warehouse)
    for name in KNOWLEDGE_STATE:
        shutil.copytree(built_template / "state" / name, state_dir / name)
    return sample_warehouse


def test_the_whole_group_builds_and_measures_retrieval(
    built: Path, state_dir: Path, data_dir: Path
) -> None:
    result = run(built, state_dir, data_dir, EMBED)  # nothing changed since the fixture's run
    assert metadata(result, "chunk_embeddings")["embedded"].value == 0
    with duckdb.connect(str(built), read_only=True) as conn:
        by_source = dict(
            conn.sql("SELECT source, count(*) FROM document_chunks GROUP BY 1").fetchall()
        )
    assert by_source["runbook"] >= 16 and by_source["incident"] == 55 and by_source["object"] > 0
    evaluation = run(built, state_dir, data_dir, ["retrieval_eval"])
    assert evaluation.success
    meta = metadata(evaluation, "retrieval_eval")
    report = meta["report"].value
    for mode in ("vector", "lexical", "hybrid", "lexical_whitespace"):
        assert f"| {mode} | overall |" in report
    assert "| hybrid | language=ko |" in report and "| hybrid | route=guide |" in report
    assert checks(evaluation)["hybrid_not_worse"].passed
    run_ = mlflow.MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}").get_run(
        meta["mlflow_run_id"].value
    )
    assert run_.data.metrics["hybrid.overall.hit_at_5"] == meta["hybrid_hit_at_5"].value


def test_only_changed_chunks_are_embedded_and_removed_ones_deleted(
    built: Path, state_dir: Path, data_dir: Path
) -> None:
    runbook = data_dir / "runbooks" / "rb-disk-full.md"
    runbook.write_text(
        runbook.read_text(encoding="utf-8") + "\n## Aftercare\n\nTell the on-call lead.\n",
        encoding="utf-8",
    )
    (data_dir / "runbooks" / "rb-high-cpu.md").unlink()
    result = run(built, state_dir, data_dir, EMBED)
    assert result.success
    meta = metadata(result, "chunk_embeddings")
    assert meta["added"].value == 1 and meta["embedded"].value == 1
    assert meta["deleted"].value > 0 and meta["updated"].value == 0
    assert checks(result)["store_matches_chunks"].passed


def test_a_deleted_store_is_rebuilt_from_the_warehouse(
    built: Path, state_dir: Path, data_dir: Path
) -> None:
    shutil.rmtree(state_dir / "chroma")
    result = run(built, state_dir, data_dir, ["chunk_embeddings"])
    assert result.success
    meta = metadata(result, "chunk_embeddings")
    assert meta["embedded"].value == meta["dagster/row_count"].value > 0


def test_a_corrupted_store_is_set_aside_and_rebuilt(
    built: Path, state_dir: Path, data_dir: Path
) -> None:
    (state_dir / "chroma" / "chroma.sqlite3").write_bytes(b"this is not a database" * 100)
    result = run(built, state_dir, data_dir, ["chunk_embeddings"])
    assert result.success
    meta = metadata(result, "chunk_embeddings")
    assert meta["rebuilt"].value != "no" and meta["embedded"].value > 0
    assert list(state_dir.glob("chroma.corrupt-*")), "the corrupted folder is kept aside"


def test_a_missing_embedding_model_fails_naming_the_path(
    sample_warehouse: Path, state_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    result = run(sample_warehouse, state_dir, data_dir, EMBED, model=str(missing))
    assert not result.success
    assert "document_chunks" in materialized(result)
    failure = next(e for e in result.all_events if e.is_failure)
    assert str(missing) in str(failure.event_specific_data.error)


def test_scores_are_judged_per_document() -> None:
    """Three chunks of one document count once: the second document is at rank 2, not 4."""

    def chunk(doc_id: str, n: int) -> Chunk:
        return Chunk(f"{doc_id}#{n}", doc_id, "runbook", "runbook", None, None, doc_id, doc_id,
                     "text", f"{doc_id}{n}")  # fmt: skip

    ranked = [chunk("rb-a", 0), chunk("rb-a", 1), chunk("rb-a", 2), chunk("rb-b", 0)]
    hits = [Hit(c, 1.0, None, None) for c in ranked]
    questions = [
        GoldenQuestion("q1", "?", "ko", "guide", ("rb-b",)),
        GoldenQuestion("q2", "?", "en", "guide", ("rb-z",)),
    ]
    scores = evaluate({"hybrid": lambda q, k: hits[:k]}, questions)
    overall = score_of(scores, "hybrid")
    assert overall.hits == {1: 0.0, 3: 0.5, 5: 0.5} and overall.mrr == 0.25
    assert score_of(scores, "hybrid", "language=ko").mrr == 0.5
    assert "| hybrid | overall | 2 | 0.000 | 0.500 | 0.500 | 0.250 |" in scores_table(scores)


def test_embeddings_follow_new_chunks_not_every_rebuild() -> None:
    """The ontology is rebuilt every few minutes; embeddings and the evaluation follow only
    when the chunk set's fingerprint (its data version) changes."""
    cursor = None

    def tick(instance: dg.DagsterInstance) -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs(), instance=instance, cursor=cursor)
        cursor = result.cursor
        return {
            k
            for k in ("chunk_embeddings", "retrieval_eval")
            if result.get_num_requested(dg.AssetKey(k))
        }

    def chunks_built(version: str) -> None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("document_chunks", tags={"dagster/data_version": version})
        )

    with dg.instance_for_test() as instance:
        for key in ("golden_questions", "chunk_embeddings", "retrieval_eval"):
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        chunks_built("v1")
        tick(instance)
        instance.report_runless_asset_event(
            dg.AssetMaterialization("chunk_embeddings", tags={"dagster/data_version": "e1"})
        )
        instance.report_runless_asset_event(dg.AssetMaterialization("retrieval_eval"))
        tick(instance)
        chunks_built("v1")
        assert tick(instance) == set()
        chunks_built("v2")
        assert "chunk_embeddings" in tick(instance)


def test_the_cli_searches_what_the_assets_built(built: Path, state_dir: Path) -> None:
    shutil.copyfile(built, state_dir / "warehouse.duckdb")
    runner = CliRunner()
    question = "NameNode가 safe mode에서 안 빠져나올 때 어떻게 해?"
    result = runner.invoke(app, ["knowledge", "search", question, "--json"])
    assert result.exit_code == 0, result.output
    assert "rb-hdfs-namenode-safemode" in [row["doc_id"] for row in json.loads(result.stdout)]
    incidents = runner.invoke(
        app, ["knowledge", "search", question, "--source", "incident", "--json"]
    )
    assert {row["source"] for row in json.loads(incidents.stdout)} == {"incident"}
    wrong = runner.invoke(app, ["knowledge", "search", question, "--mode", "magic"])
    assert wrong.exit_code == 1 and "unknown mode 'magic'" in wrong.output
