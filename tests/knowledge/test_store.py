"""The embedder (real packaged all-MiniLM-L6-v2, offline) and the chroma chunk store (real
embedded chroma in a temp folder; one test against a real `chroma run` server)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dagster_platform.kafka.broker import free_port
from dagster_platform.knowledge.embeddings import (
    Embedder,
    EmbeddingModelError,
    resolve_embedding_model,
)
from dagster_platform.knowledge.vector_store import (
    ChunkStore,
    StoreRecord,
    open_client,
    open_store,
)
from dagster_platform.lib.packaged_models import read_manifest
from dagster_platform.settings import get_settings

TEXTS = [
    ("runbook", "Restart the Spark driver when executors are lost after a node failure."),
    ("runbook", "Free disk space on a data node by cleaning old YARN container logs."),
    ("runbook", "Raise the executor memory when a job fails with an out-of-memory error."),
    ("runbook", "Drain a node before rebooting it so running containers finish elsewhere."),
    ("runbook", "클러스터 CPU 사용률이 높으면 오래 실행 중인 작업을 확인한다."),
    ("runbook", "Rebalance HDFS blocks after adding new data nodes to the cluster."),
    ("incident", "Disk full on worker-07 stopped the nightly ETL job at 02:10."),
    ("incident", "Executors lost on cluster c2 after a rack switch failed."),
    ("incident", "Out-of-memory kills of the feature job after the input doubled."),
    ("incident", "CPU saturation on cluster c1 caused by a runaway Spark query."),
    ("incident", "Kafka consumer lag grew for an hour when the broker ran out of disk."),
    ("incident", "A skewed join kept one executor busy for six hours."),
]


def record(index: int, source: str, text: str) -> StoreRecord:
    return StoreRecord(
        id=f"chunk-{index:02d}",
        text=text,
        metadata={
            "source": source,
            "object_type": "Runbook" if source == "runbook" else "Incident",
            "object_key": None if source == "runbook" else f"INC-{index}",
            "cluster_id": "c1" if index % 2 else None,
            "doc_id": f"doc-{index // 2}",
        },
        content_hash=hashlib.sha256(text.encode()).hexdigest(),
    )


RECORDS = [record(i, source, text) for i, (source, text) in enumerate(TEXTS)]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder.from_name(None, tmp_path_factory.mktemp("models"))


class CountingEmbed:
    """The real embedder, remembering how many texts each call asked for."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.embedder.encode(texts)

    @property
    def texts(self) -> int:
        return sum(self.calls)


def random_unit_vectors(texts: list[str]) -> np.ndarray:
    vectors = np.random.default_rng(len(texts)).standard_normal((len(texts), 384))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    opened, note = open_store(tmp_path / "chroma", None)
    assert note is None
    yield opened
    opened.close()


@pytest.mark.slow
@pytest.mark.models
def test_embedder_returns_unit_float32_vectors(embedder: Embedder) -> None:
    vectors = embedder.encode(
        ["cluster CPU usage is high", "클러스터 CPU 사용률이 높다", "disk full"]
    )
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.dimension == 384
    assert embedder.model_name == "all-MiniLM-L6-v2"
    assert embedder.encode([]).shape == (0, 384)
    assert Embedder(embedder.model_path).model is embedder.model  # loaded once per process


@pytest.mark.models
def test_default_model_is_the_packaged_one_prepared_in_the_state_folder(state_dir: Path) -> None:
    folder = resolve_embedding_model(None, get_settings().models_dir)
    assert folder == (state_dir / "models" / "all-MiniLM-L6-v2").resolve()
    assert read_manifest(folder) is not None


def test_a_model_that_is_not_there_is_named_and_not_downloaded(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EmbeddingModelError, match="no-such-model"):
        resolve_embedding_model(str(missing), tmp_path)
    with pytest.raises(EmbeddingModelError, match="platform-tests/not-cached"):
        resolve_embedding_model("platform-tests/not-cached", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("optimum") is not None, reason="optimum installed")
@pytest.mark.models
def test_onnx_backend_without_optimum_fails_clearly(embedder: Embedder) -> None:
    onnx = Embedder(embedder.model_path, backend="onnx")
    with pytest.raises(EmbeddingModelError, match=r"optimum-onnx.*backend='torch'"):
        onnx.encode(["x"])


@pytest.mark.slow
@pytest.mark.models
def test_sync_embeds_only_new_and_changed_records(store: ChunkStore, embedder: Embedder) -> None:
    embed = CountingEmbed(embedder)
    first = store.sync(RECORDS, embed, batch_size=5)
    assert (first.added, first.embedded, first.updated, first.deleted) == (12, 12, 0, 0)
    assert embed.calls == [5, 5, 2]
    assert store.verify({r.id for r in RECORDS}, 384) == []

    embed.calls.clear()
    again = store.sync(RECORDS, embed)
    assert (again.unchanged, again.embedded, again.added, again.updated) == (12, 0, 0, 0)

    text = "Restart the Spark driver and the shuffle service after a node failure."
    edited = [*RECORDS]
    edited[0] = replace(
        RECORDS[0], text=text, content_hash=hashlib.sha256(text.encode()).hexdigest()
    )
    changed = store.sync(edited, embed)
    assert (changed.updated, changed.embedded, changed.unchanged) == (1, 1, 11)
    assert store.query(embedder.encode([text])[0], 1)[0][0] == "chunk-00"

    removed = store.sync(edited[1:], embed)
    assert (removed.deleted, removed.embedded, removed.unchanged) == (1, 0, 11)
    assert store.count() == 11
    assert store.verify({r.id for r in edited[1:]}, 384) == []


def test_metadata_change_is_written_without_embedding(store: ChunkStore) -> None:
    store.sync(RECORDS, random_unit_vectors)
    moved = replace(RECORDS[1], metadata={**RECORDS[1].metadata, "cluster_id": None})
    report = store.sync([moved, *RECORDS[2:], RECORDS[0]], random_unit_vectors)
    assert (report.updated, report.embedded, report.unchanged) == (1, 0, 11)
    stored = store.stored()
    assert "cluster_id" not in stored["chunk-01"]  # None is dropped, not kept from before
    assert stored["chunk-01"]["content_hash"] == RECORDS[1].content_hash
    assert "object_key" not in stored["chunk-00"]


def test_verify_reports_stray_ids_missing_ids_and_wrong_dimension(store: ChunkStore) -> None:
    store.sync(RECORDS, random_unit_vectors)
    ids = {r.id for r in RECORDS}
    store.collection.add(ids=["stray-1"], embeddings=random_unit_vectors(["x"]))
    problems = store.verify(ids | {"chunk-99"}, 384)
    assert any("stray ids: stray-1" in p for p in problems)
    assert any("missing: chunk-99" in p for p in problems)
    assert not any("dimension" in p for p in problems)
    wrong = store.verify(ids | {"stray-1"}, 768)
    assert wrong == [
        "13 vectors have dimension [384], expected 768: " + ", ".join(sorted(ids | {"stray-1"})[:5])
    ]


@pytest.mark.slow
@pytest.mark.models
def test_query_ranks_by_cosine_similarity_within_a_source(
    store: ChunkStore, embedder: Embedder
) -> None:
    store.sync(RECORDS, embedder.encode)
    query = embedder.encode(["a data node ran out of disk space"])[0]
    incidents = store.query(query, 3, {"source": "incident"})
    assert incidents[0][0] == "chunk-06"  # "Disk full on worker-07 ..."
    assert all(int(id_[-2:]) >= 6 for id_, _ in incidents)
    scores = [score for _, score in incidents]
    assert scores == sorted(scores, reverse=True)
    exact = store.query(embedder.encode([TEXTS[1][1]])[0], 1)
    assert exact[0][0] == "chunk-01"
    assert exact[0][1] == pytest.approx(1.0, abs=1e-4)
    both = store.query(query, 20, {"$and": [{"source": "runbook"}, {"cluster_id": "c1"}]})
    assert {id_ for id_, _ in both} == {"chunk-01", "chunk-03", "chunk-05"}


def test_duplicate_ids_are_refused_before_anything_is_written(store: ChunkStore) -> None:
    with pytest.raises(ValueError, match="duplicate record ids: chunk-02"):
        store.sync([*RECORDS, RECORDS[2]], random_unit_vectors)
    assert store.count() == 0


def test_reset_empties_the_collection(store: ChunkStore) -> None:
    store.sync(RECORDS, random_unit_vectors)
    store.reset()
    assert store.count() == 0
    assert store.sync(RECORDS, random_unit_vectors).added == 12


def test_deleted_folder_is_recreated_and_resynced(tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    first, _ = open_store(path, None)
    first.sync(RECORDS, random_unit_vectors)
    first.close()
    shutil.rmtree(path)
    second, note = open_store(path, None)
    assert note is None
    assert second.count() == 0
    assert second.sync(RECORDS, random_unit_vectors).added == 12
    second.close()


def garbage_over_sqlite(path: Path) -> None:
    (path / "chroma.sqlite3").write_bytes(np.random.default_rng(1).bytes(64 * 1024))


def random_files(path: Path) -> None:
    shutil.rmtree(path)
    path.mkdir()
    (path / "chroma.sqlite3").write_text("not a database")
    (path / "junk.bin").write_bytes(b"\x00\x01" * 500)


def damaged_index(path: Path) -> None:
    for header in path.glob("*/header.bin"):
        header.write_bytes(b"\x00" * 64)


def file_instead_of_folder(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("oops")


@pytest.mark.parametrize(
    "damage", [garbage_over_sqlite, random_files, damaged_index, file_instead_of_folder]
)
def test_corrupted_folder_is_moved_aside_and_rebuilt(tmp_path: Path, damage) -> None:
    path = tmp_path / "chroma"
    first, _ = open_store(path, None)
    many = [StoreRecord(f"r{i}", f"text {i}", {"source": "runbook"}, str(i)) for i in range(1100)]
    first.sync(many, random_unit_vectors)  # past HNSW's sync threshold, so index files exist
    first.close()
    damage(path)
    damaged = sorted(p.name for p in path.rglob("*")) if path.is_dir() else ["<file>"]

    store, note = open_store(path, None)
    assert note is not None and "moved it to" in note and str(path) in note
    (aside,) = tmp_path.glob("chroma.corrupt-*")
    assert str(aside) in note
    assert (sorted(p.name for p in aside.rglob("*")) if aside.is_dir() else ["<file>"]) == damaged
    assert store.count() == 0
    assert store.sync(RECORDS, random_unit_vectors).added == 12
    store.close()

    reopened, note = open_store(path, None)  # the rebuilt store is healthy
    assert note is None
    assert reopened.count() == 12
    reopened.close()


def test_telemetry_is_off(store: ChunkStore) -> None:
    assert store.client.get_settings().anonymized_telemetry is False


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    """A real chroma server, as `CHROMA_HOST` points to in production."""
    binary = Path(sys.executable).with_name("chroma")
    if not binary.is_file():
        pytest.skip("chroma CLI not installed")
    port = free_port()
    log = (tmp_path / "chroma-server.log").open("w")
    server = subprocess.Popen(
        [str(binary), "run", "--path", str(tmp_path / "server"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)
    log.close()


def test_chroma_server_is_used_when_a_host_is_set(chroma_server: str) -> None:
    client = open_client(None, f"http://{chroma_server}")
    assert client.heartbeat() > 0
    store, note = open_store(None, chroma_server)
    assert note is None
    assert store.sync(RECORDS, random_unit_vectors).added == 12
    assert store.verify({r.id for r in RECORDS}, 384) == []
    (vector,) = store.collection.get(ids=["chunk-03"], include=["embeddings"])["embeddings"]
    assert store.query(vector, 1) == [("chunk-03", pytest.approx(1.0, abs=1e-4))]
