"""Where the loop keeps its files in the state folder, and how one step finds the last's.

`finetune/datasets/<version>/` holds each dataset; `latest.json` beside them names the newest
one that passed every blocking check, so a training run never picks up a dataset the checks
refused. Evaluations are kept per challenger version for the gate to read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dagster_platform.finetune.dataset import MANIFEST
from dagster_platform.lib import charts

if TYPE_CHECKING:
    from dagster_platform.finetune.evaluation import EvaluationReport
    from dagster_platform.finetune.training import TrainProgress

LATEST = "latest.json"


class NoDataset(RuntimeError):
    """No dataset has passed its checks yet (or the one named is gone)."""


class NotEvaluated(RuntimeError):
    """The challenger has no saved evaluation for the gate to read."""


def finetune_dir(state_dir: Path) -> Path:
    return state_dir / "finetune"


def datasets_dir(state_dir: Path) -> Path:
    return finetune_dir(state_dir) / "datasets"


def frozen_state_dir(state_dir: Path) -> Path:
    """The frozen copy of the sample the agent subset runs on (rebuilt when the sample
    changes, reused otherwise)."""
    return finetune_dir(state_dir) / "frozen"


def training_dir(state_dir: Path, run_id: str) -> Path:
    return finetune_dir(state_dir) / "runs" / run_id


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def mark_latest_dataset(state_dir: Path, version: str) -> None:
    _write_json(
        datasets_dir(state_dir) / LATEST, {"version": version, "at": datetime.now(UTC).isoformat()}
    )


def latest_dataset(state_dir: Path) -> Path:
    pointer = datasets_dir(state_dir) / LATEST
    if not pointer.is_file():
        raise NoDataset(
            f"no dataset has passed its checks yet ({pointer} is missing): "
            "materialize sft_dataset first"
        )
    return dataset_dir(state_dir, json.loads(pointer.read_text(encoding="utf-8"))["version"])


def dataset_dir(state_dir: Path, version: str | None) -> Path:
    if not version:
        return latest_dataset(state_dir)
    path = datasets_dir(state_dir) / version
    if not (path / MANIFEST).is_file():
        raise NoDataset(f"dataset {version} is not in {datasets_dir(state_dir)}")
    return path


def evaluation_path(state_dir: Path, version: str) -> Path:
    return finetune_dir(state_dir) / "evaluations" / f"v{version}.json"


def save_evaluation(state_dir: Path, version: str, report: EvaluationReport) -> Path:
    path = evaluation_path(state_dir, version)
    _write_json(path, report.to_dict())
    return path


def load_evaluation(state_dir: Path, version: str) -> EvaluationReport:
    from dagster_platform.finetune.evaluation import EvaluationReport

    path = evaluation_path(state_dir, version)
    if not path.is_file():
        raise NotEvaluated(f"challenger v{version} has not been evaluated: no {path}")
    return EvaluationReport.from_dict(json.loads(path.read_text(encoding="utf-8")))


def loss_curve_png(history: Sequence[TrainProgress]) -> bytes:
    """Training loss by step (and tokens/s on a second axis), for the materialization."""
    with charts.figure(figsize=(6, 3), dpi=100) as (_, drawn, loss_axis):
        steps = [p.step for p in history]
        loss_axis.plot(steps, [p.loss for p in history], color="tab:blue", marker=".")
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss", color="tab:blue")
        speed_axis = loss_axis.twinx()
        speed_axis.plot(steps, [p.tokens_per_s for p in history], color="tab:orange", alpha=0.6)
        speed_axis.set_ylabel("tokens/s", color="tab:orange")
        drawn.tight_layout()
        return charts.png(drawn)
