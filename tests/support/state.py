"""Throwaway state folders and the sample data the tests read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import AliasChoices

from dagster_platform.ingestion.readers import read_source
from dagster_platform.ingestion.sources import SOURCES
from dagster_platform.ingestion.validation import to_typed
from dagster_platform.kafka.rollups import ROLLUPS
from dagster_platform.kafka.tables import ensure_all_tables
from dagster_platform.lib.warehouse import replace_table
from dagster_platform.settings import REPO_ROOT, Settings

SAMPLE_DIR = REPO_ROOT / "data" / "sample"


ONTOLOGY_DIR = REPO_ROOT / "data" / "ontology"


ROLES_FILE = REPO_ROOT / "data" / "roles.yaml"


PREPARED_MODELS = REPO_ROOT / ".state" / "models"  # what `make test` prepared


def live_settings(state_dir: Path, data: Path = SAMPLE_DIR) -> Settings:
    """Settings of a throwaway state folder whose models are the checkout's prepared ones."""
    live = Settings(state_dir=state_dir, data_dir=data, ontology_dir=ONTOLOGY_DIR)
    live.state_dir.mkdir(parents=True)
    live.models_dir.symlink_to(PREPARED_MODELS.resolve(), target_is_directory=True)
    return live


def platform_environment() -> tuple[str, ...]:
    """Every environment variable a setting reads, from the settings' own field list, so a new
    setting can never leak from the developer's shell into a test."""
    names: list[str] = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names += [c for c in choices if isinstance(c, str) and c.isupper()]
    return tuple(names)


def isolate_environment(monkeypatch: pytest.MonkeyPatch, state: Path) -> None:
    """Point the platform at `state` and forget every setting this shell may carry."""
    for name in platform_environment():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_PLATFORM_STATE", str(state))


def load_sample_warehouse(path: Path, data: Path = SAMPLE_DIR) -> Path:
    """A DuckDB file holding the typed sample tables and the (empty) stream and rollup tables,
    as the ingestion assets leave it, without running Dagster."""
    with duckdb.connect(str(path)) as conn:
        for spec in SOURCES:
            replace_table(conn, spec.name, to_typed(read_source(spec, data)))
        ensure_all_tables(conn)
        for rollup in ROLLUPS:
            conn.execute(rollup.create)
    return path


def platform_resources(**overrides: Any) -> dict[str, Any]:
    """The code location's resources, each defaulting to the test's environment (see
    `isolate_environment`), with `overrides` in place of some."""
    import resources

    return {**(resources.defs.resources or {}), **overrides}
