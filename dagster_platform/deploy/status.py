"""What is configured and what is reachable: the answer of `dagster-platform status`."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.topics import PLATFORM_TOPICS, KafkaUnavailable, list_topics
from dagster_platform.lib.packaged_models import models_status
from dagster_platform.settings import Settings


def warehouse_status(
    path: Path,
    counts: Mapping[str, str] | None = None,
    lock: threading.Lock | None = None,
    wait_s: float = 5.0,
) -> dict[str, Any]:
    """What the warehouse holds: its tables, and for each name in `counts` the rows of that
    table (0 while it does not exist). With `lock` (a process that also writes the file) it
    waits at most `wait_s` for it, and says so rather than block."""
    info: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        return {**info, "state": "not created yet (materialize the ingestion group)"}
    if lock is not None and not lock.acquire(timeout=wait_s):
        return {**info, "state": "busy answering; counts not read"}
    try:
        with duckdb.connect(str(path), read_only=True) as conn:
            tables = [row[0] for row in conn.execute("SHOW TABLES").fetchall()]
            rows = {
                name: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                if table in tables
                else 0
                for name, table in (counts or {}).items()
            }
    except duckdb.Error as exc:  # another process holds the write lock
        return {**info, "state": f"exists; not readable now ({exc})"}
    finally:
        if lock is not None:
            lock.release()
    return {**info, "state": "ready", "tables": tables, **rows}


def broker_status(settings: Settings) -> dict[str, Any]:
    """Where Kafka clients connect, whether the broker answers, which platform topics exist."""
    info: dict[str, Any] = {
        "mode": "embedded" if settings.embedded_broker else "external",
        "bootstrap_servers": settings.bootstrap_servers,
    }
    if settings.embedded_broker:
        broker = EmbeddedBroker(settings.broker_port, settings.broker_dir)
        info["managed_pid"] = broker.running_pid()
    try:
        topics = list_topics(settings.bootstrap_servers, timeout=3.0)
    except KafkaUnavailable as exc:
        info.update(reachable=False, error=str(exc))
        return info
    expected = [t.name for t in PLATFORM_TOPICS]
    info.update(
        reachable=True,
        topics={name: topics[name] for name in expected if name in topics},
        missing_topics=[name for name in expected if name not in topics],
    )
    return info


def collect_status(settings: Settings) -> dict[str, Any]:
    data_files = {s.name: (settings.data_dir / s.path).exists() for s in SOURCES}
    return {
        "state_dir": {"path": str(settings.state_dir), "exists": settings.state_dir.is_dir()},
        "data_dir": {"path": str(settings.data_dir), "sources_present": data_files},
        "warehouse": warehouse_status(settings.warehouse_path),
        "broker": broker_status(settings),
        "models": models_status(settings.models_dir),
        "dagster_home": {
            "path": str(settings.dagster_home),
            "configured": (settings.dagster_home / "dagster.yaml").is_file(),
        },
        "endpoints": {
            "LLM_BACKEND": settings.llm_backend,
            "VLLM_BASE_URL": settings.vllm_base_url,
            "BASE_MODEL": settings.base_model or "packaged SmolLM2-135M-Instruct",
            "EMBEDDING_MODEL": settings.embedding_model or "packaged all-MiniLM-L6-v2",
            "MLFLOW_TRACKING_URI": settings.resolved_mlflow_tracking_uri,
            "CHROMA_HOST": settings.chroma_host or "embedded PersistentClient in the state folder",
        },
    }
