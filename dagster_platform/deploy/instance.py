"""The Dagster instance of a local deployment: DAGSTER_HOME in the state folder and its
dagster.yaml (pool limits, run queue, masked JSON run logs, telemetry off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dagster_platform.lib.logs import dagster_python_logs_config
from dagster_platform.settings import Settings


def instance_config(settings: Settings) -> dict[str, Any]:
    return {
        "telemetry": {"enabled": False},
        "concurrency": {
            # every pool (warehouse, vector store) admits one op at a time across all runs
            "pools": {"default_limit": 1},
            "runs": {"max_concurrent_runs": 4},
        },
        # a run whose worker died still holds its pool slots; the daemon frees them
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": 30,
            "free_slots_after_run_end_seconds": 30,
        },
        "python_logs": dagster_python_logs_config(str(settings.logs_dir / "runs.jsonl")),
    }


def write_instance_config(settings: Settings) -> Path:
    """Create DAGSTER_HOME and write its dagster.yaml; return the folder."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(instance_config(settings), sort_keys=False), encoding="utf-8"
    )
    return home
