"""The adapters of the registered model in MLflow: versions, the `challenger` and `champion`
aliases, and each version as a local peft folder.

MLflow is the one source of truth for which adapter serves (the LLM service reads
`@champion`); this wrapper names the failures a person can act on (no such version, a run
without an adapter, a download that holds none) instead of MLflow's generic errors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_platform.lib.logs import get_logger
from dagster_platform.llm.base import AdapterInfo, AdapterLoadError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = get_logger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
SOURCE_MARKER = ".mlflow-source"
DATASET_TAG = "dataset_version"
METRIC_TAG_PREFIX = "metric."
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says what is missing."""


class NoSuchVersion(RegistryError):
    """The version, or the version behind an alias, does not exist."""


@dataclass(frozen=True)
class AdapterVersion:
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    created_at: datetime
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None

    @property
    def dataset_version(self) -> str | None:
        return self.tags.get(DATASET_TAG)

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics recorded as `metric.NAME` tags (the gate writes the evaluation's)."""
        found = {}
        for key, value in self.tags.items():
            if key.startswith(METRIC_TAG_PREFIX):
                try:
                    found[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
                except ValueError:
                    continue
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "aliases": list(self.aliases),
            "run_id": self.run_id,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "dataset_version": self.dataset_version,
            "metrics": self.metrics,
            "tags": self.tags,
            "description": self.description,
        }


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in _MISSING


class AdapterRegistry:
    """One registered model's versions; the MLflow client is built on first use."""

    def __init__(self, tracking_uri: str, registered_model: str):
        self.tracking_uri = tracking_uri
        self.registered_model = registered_model
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            import mlflow  # slow to import; only callers of the registry pay for it

            self._client = mlflow.MlflowClient(self.tracking_uri, self.tracking_uri)
        return self._client

    # --- reading -----------------------------------------------------------------------------

    def _aliases(self) -> dict[str, list[str]]:
        """Aliases per version (search results do not carry them)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.registered_model)
        except MlflowException as exc:
            if _is_missing(exc):
                return {}
            raise
        by_version: dict[str, list[str]] = {}
        for alias, version in sorted(model.aliases.items()):
            by_version.setdefault(str(version), []).append(alias)
        return by_version

    def _version(self, found: ModelVersion, aliases: dict[str, list[str]]) -> AdapterVersion:
        version = str(found.version)
        return AdapterVersion(
            version=version,
            aliases=tuple(aliases.get(version, ())),
            run_id=found.run_id or None,
            source=found.source,
            created_at=datetime.fromtimestamp(found.creation_timestamp / 1000, UTC),
            tags=dict(found.tags or {}),
            description=found.description or None,
        )

    def versions(self) -> list[AdapterVersion]:
        """Every version, newest first; empty when the model was never registered."""
        name = self.registered_model.replace("'", "\\'")
        found = self.client.search_model_versions(f"name='{name}'")
        aliases = self._aliases()
        return sorted(
            (self._version(v, aliases) for v in found), key=lambda v: int(v.version), reverse=True
        )

    def get(self, version: str) -> AdapterVersion:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version(self.registered_model, str(version))
        except MlflowException as exc:
            if _is_missing(exc):
                raise NoSuchVersion(
                    f"{self.registered_model} has no version {version!r}"
                    " (`dagster-platform adapters list` shows them)"
                ) from exc
            raise
        return self._version(found, self._aliases())

    def by_alias(self, alias: str) -> AdapterVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(self.registered_model, alias)
        except MlflowException as exc:
            if _is_missing(exc):
                return None
            raise
        return self._version(found, self._aliases())

    # --- writing -----------------------------------------------------------------------------

    def register(
        self,
        run_id: str,
        artifact_path: str = "adapter",
        tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> AdapterVersion:
        """A new version from the run's adapter artifact, aliased `challenger`. A run that did
        not finish, or holds no peft adapter there, is refused: nothing is registered."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(f"no MLflow run {run_id!r} to register") from exc
            raise
        if run.info.status != "FINISHED":
            raise RegistryError(
                f"run {run_id} is {run.info.status}, not FINISHED (an interrupted or failed "
                "training); nothing registered"
            )
        files = {Path(a.path).name for a in self.client.list_artifacts(run_id, artifact_path)}
        if "adapter_config.json" not in files:
            raise RegistryError(
                f"run {run_id} has no peft adapter under {artifact_path!r} "
                f"(found: {sorted(files) or 'nothing'}); nothing registered"
            )
        try:
            self.client.create_registered_model(self.registered_model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        created = self.client.create_model_version(
            self.registered_model,
            f"{run.info.artifact_uri}/{artifact_path}",
            run_id,
            tags=dict(tags or {}),
            description=description,
        )
        version = str(created.version)
        self.set_alias(CHALLENGER, version)
        log.info(
            "adapter registered",
            extra={"registered_model": self.registered_model, "version": version},
        )
        return self.get(version)

    def set_alias(self, alias: str, version: str) -> None:
        self.get(version)  # a clear error for an unknown version
        self.client.set_registered_model_alias(self.registered_model, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        """Remove `alias` (nothing to do when it is not set)."""
        if self.by_alias(alias) is not None:
            self.client.delete_registered_model_alias(self.registered_model, alias)

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.registered_model, str(version), key, value)

    # --- local copies ------------------------------------------------------------------------

    def local_adapter(self, version_or_alias: str, adapters_dir: Path) -> AdapterInfo:
        """The version (a number, or an alias such as `champion`) as a peft folder in
        `<adapters_dir>/<model>-v<N>`, downloaded once and reused while it came from the
        version's own source (a registry that was reset renumbers its versions)."""
        reference = str(version_or_alias)
        if reference.isdigit():
            found = self.get(reference)
            source = f"models:/{self.registered_model}/{reference}"
        else:
            alias_of = self.by_alias(reference)
            if alias_of is None:
                raise NoSuchVersion(f"{self.registered_model} has no version aliased {reference!r}")
            found, source = alias_of, f"models:/{self.registered_model}@{reference}"
        name = f"{self.registered_model}-v{found.version}"
        target = Path(adapters_dir) / name
        marker = target / SOURCE_MARKER
        cached = marker.read_text(encoding="utf-8") if marker.is_file() else None
        if cached != found.source or not (target / "adapter_config.json").is_file():
            download_adapter(found.source, self.tracking_uri, target)
            marker.write_text(found.source, encoding="utf-8")
        return AdapterInfo(
            name=name,
            path=target,
            version=found.version,
            source=source,
            extra={"run_id": found.run_id},
        )


def download_adapter(source: str, tracking_uri: str, target: Path) -> None:
    """Download a version's artifact into `target`, atomically: a download that holds no
    readable peft adapter config leaves nothing behind."""
    import mlflow

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri
            )
        )
        configs = sorted(local.rglob("adapter_config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise AdapterLoadError(f"{source} holds no peft adapter (no adapter_config.json)")
        try:
            json.loads(configs[0].read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterLoadError(f"{source}: adapter_config.json is not valid JSON") from exc
        if target.exists():
            shutil.rmtree(target)
        os.replace(configs[0].parent, target)
