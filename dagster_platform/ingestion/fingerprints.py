"""Content fingerprints of the sources, so a sensor re-ingests exactly what changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dagster_platform.ingestion.sources import SOURCES, SourceSpec


def fingerprint(spec: SourceSpec, data_dir: Path) -> str | None:
    """sha256 over the source's bytes (every .md file, for a folder); None when it is absent."""
    path = data_dir / spec.path
    files = sorted(path.glob("*.md")) if spec.format == "markdown" else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def changed_sources(
    data_dir: Path, previous: dict[str, str], sources: tuple[SourceSpec, ...] = SOURCES
) -> tuple[list[str], dict[str, str]]:
    """Sources whose content changed since `previous`, plus every source that refers to one
    of them (its references must be re-checked); and the new fingerprints."""
    current = {}
    for spec in sources:
        value = fingerprint(spec, data_dir)
        if value is not None:
            current[spec.name] = value
    changed = {name for name, value in current.items() if previous.get(name) != value}
    grew = True
    while grew:
        dependents = {s.name for s in sources if changed & set(s.upstream_tables)}
        grew = not dependents <= changed
        changed |= dependents
    return [s.name for s in sources if s.name in changed], current
