"""What is configured and what is reachable: the answer of `dagster-platform status`."""

from __future__ import annotations

from typing import Any

import duckdb

from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.topics import PLATFORM_TOPICS, KafkaUnavailable, list_topics
from dagster_platform.lib.packaged_models import models_status
from dagster_platform.settings import Settings


def _warehouse(settings: Settings) -> dict[str, Any]:
    path = settings.warehouse_path
    if not path.exists():
        return {"path": str(path), "state": "not created yet (materialize the ingestion group)"}
    try:
        with duckdb.connect(str(path), read_only=True) as conn:
            tables = [row[0] for row in conn.execute("SHOW TABLES").fetchall()]
    except duckdb.Error as exc:  # another process holds the write lock
        return {"path": str(path), "state": f"exists; not readable now ({exc})"}
    return {"path": str(path), "state": "ready", "tables": tables}


def _broker(settings: Settings) -> dict[str, Any]:
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
        "warehouse": _warehouse(settings),
        "broker": _broker(settings),
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
