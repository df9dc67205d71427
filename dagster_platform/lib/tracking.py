"""MLflow runs for what the assets measure, in the tracking store the settings name.

With the default sqlite store, artifacts go next to it in the state folder: MLflow's own
default (`./mlruns` under the current directory) would scatter them wherever a run starts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    experiment_id: str
    tracking_uri: str


def experiment_id_for(client: Any, experiment: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it (with its artifacts under `artifact_root`) if new."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / experiment).resolve().as_uri() if artifact_root else None
    return client.create_experiment(experiment, artifact_location=location)


def log_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    texts: Mapping[str, str] | None = None,
    files: Mapping[str, bytes] | None = None,
    tags: Mapping[str, str] | None = None,
    artifact_root: Path | None = None,
) -> TrackedRun:
    """One finished run with its parameters, metrics, text artifacts (e.g. a report) and
    binary ones (e.g. a chart)."""
    import mlflow  # slow to import; only the assets that track pay for it

    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = experiment_id_for(client, experiment, artifact_root)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    run_id = run.info.run_id
    try:
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, _metric_key(key), float(value))
        for name, text in (texts or {}).items():
            client.log_text(run_id, text, name)
        if files:
            with tempfile.TemporaryDirectory(prefix="mlflow-files-") as folder:
                for name, data in files.items():
                    path = Path(folder) / name
                    path.write_bytes(data)
                    client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    log.info("mlflow run logged", extra={"experiment": experiment, "mlflow_run_id": run_id})
    return TrackedRun(run_id, experiment_id, tracking_uri)


def _metric_key(key: str) -> str:
    """MLflow keys allow letters, digits and `_-./ `; anything else becomes `_`."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
