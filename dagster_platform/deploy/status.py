"""What is configured and what is reachable: the answer of `dagster-platform status`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.topics import PLATFORM_TOPICS, KafkaUnavailable, list_topics
from dagster_platform.lib.packaged_models import models_status
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.settings import Settings


def warehouse_status(
    path: Path, counts: Mapping[str, str] | None = None, wait_s: float = 5.0
) -> dict[str, Any]:
    """What the warehouse holds: its tables, and for each name in `counts` the rows of that
    table (0 while it does not exist). It waits at most `wait_s` for a writer elsewhere, and
    says so rather than block."""
    info: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        return {**info, "state": "not created yet (materialize the ingestion group)"}
    try:
        with open_warehouse(path, read_only=True, wait_seconds=wait_s) as conn:
            tables = [row[0] for row in conn.execute("SHOW TABLES").fetchall()]
            rows = {
                name: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                if table in tables
                else 0
                for name, table in (counts or {}).items()
            }
    except duckdb.Error as exc:  # another process holds the write lock
        return {**info, "state": f"exists; not readable now ({exc})"}
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


def llm_status(settings: Settings) -> dict[str, Any]:
    """Which backend answers now, and the local vLLM server's state when it is the one."""
    from dagster_platform.llm.service import local_vllm_server, resolve_backend

    backend, url, _ = resolve_backend(settings)
    info: dict[str, Any] = {"setting": settings.llm_backend, "answers_with": backend}
    if backend == "vllm-server":
        info["vllm_url"] = url
        if not settings.vllm_base_url:
            info["local_vllm"] = local_vllm_server(settings).status()
    return info


def collect_status(settings: Settings) -> dict[str, Any]:
    data_files = {s.name: (settings.data_dir / s.path).exists() for s in SOURCES}
    return {
        "state_dir": {"path": str(settings.state_dir), "exists": settings.state_dir.is_dir()},
        "data_dir": {"path": str(settings.data_dir), "sources_present": data_files},
        "warehouse": warehouse_status(settings.warehouse_path),
        "broker": broker_status(settings),
        "models": models_status(settings.models_dir),
        "llm": llm_status(settings),
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
