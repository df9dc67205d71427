"""Schema versions: a content hash, what changed since the last published version, and which
changes break consumers unless declared as migrations.

Breaking: an object, link or action type removed, a property removed or its type changed.
Everything else (additions, new descriptions, templates, derivations) is compatible. A
migration in the YAML names the breaking change it accepts, and only that one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import duckdb

from dagster_platform.ontology.schema import Migration, Ontology

VERSIONS_TABLE = "ontology_versions"


def canonical(ontology: Ontology) -> str:
    """The ontology as JSON with sorted keys: files and key order do not change the version."""
    body = ontology.model_dump(mode="json", exclude={"migrations"})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def version_of(ontology: Ontology) -> str:
    return hashlib.sha256(canonical(ontology).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Change:
    kind: str  # e.g. property_added, property_removed, property_type_changed
    subject: str  # e.g. host.rack
    detail: str = ""
    breaking: bool = False
    migrated: bool = False

    def __str__(self) -> str:
        text = f"{self.kind} {self.subject}" + (f" ({self.detail})" if self.detail else "")
        if self.breaking:
            text += " — breaking, declared as a migration" if self.migrated else " — BREAKING"
        return text


@dataclass
class SchemaDiff:
    previous_version: str | None
    version: str
    changes: list[Change] = field(default_factory=list)

    @property
    def undeclared_breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking and not c.migrated]

    def markdown(self) -> str:
        if self.previous_version is None:
            return f"First version `{self.version}`."
        if not self.changes:
            return f"No changes since `{self.previous_version}`."
        lines = [f"Changes from `{self.previous_version}` to `{self.version}`:", ""]
        lines += [f"- {change}" for change in self.changes]
        return "\n".join(lines)


def _covered(migrations: tuple[Migration, ...], kind: str, **subject: str) -> bool:
    return any(
        m.change == kind and all(getattr(m, k) == v for k, v in subject.items()) for m in migrations
    )


def diff(previous: dict[str, Any] | None, current: Ontology) -> SchemaDiff:
    """Compare the previous published ontology (as `canonical` JSON, parsed) with `current`."""
    version = version_of(current)
    if previous is None:
        return SchemaDiff(None, version)
    before = Ontology.model_validate(previous)
    result = SchemaDiff(version_of(before), version)
    migrations = current.migrations
    add = result.changes.append
    for section, kind in (
        ("object_types", "object_type"),
        ("link_types", "link_type"),
        ("action_types", "action_type"),
        ("functions", "function"),
    ):
        old, new = getattr(before, section), getattr(current, section)
        for name in sorted(set(new) - set(old)):
            add(Change(f"{kind}_added", name))
        for name in sorted(set(old) - set(new)):
            breaking = kind != "function"
            migrated = breaking and _covered(migrations, f"{kind}_removed", **{kind: name})
            add(Change(f"{kind}_removed", name, breaking=breaking, migrated=migrated))
        for name in sorted(set(old) & set(new)):
            if old[name] != new[name] and kind != "object_type":
                add(Change(f"{kind}_changed", name))
    for name in sorted(set(before.object_types) & set(current.object_types)):
        old_obj, new_obj = before.object_types[name], current.object_types[name]
        old_props, new_props = old_obj.properties, new_obj.properties
        for prop in sorted(set(new_props) - set(old_props)):
            add(Change("property_added", f"{name}.{prop}", new_props[prop].type))
        for prop in sorted(set(old_props) - set(new_props)):
            migrated = _covered(migrations, "property_removed", object_type=name, property=prop)
            add(Change("property_removed", f"{name}.{prop}", breaking=True, migrated=migrated))
        for prop in sorted(set(old_props) & set(new_props)):
            was, now = old_props[prop], new_props[prop]
            if was.type != now.type:
                migrated = _covered(
                    migrations, "property_type_changed", object_type=name, property=prop
                )
                add(
                    Change(
                        "property_type_changed",
                        f"{name}.{prop}",
                        f"{was.type} → {now.type}",
                        breaking=True,
                        migrated=migrated,
                    )
                )
            elif was != now:
                add(Change("property_changed", f"{name}.{prop}"))
        if old_obj.model_copy(update={"properties": {}}) != new_obj.model_copy(
            update={"properties": {}}
        ):
            add(Change("object_type_changed", name))
    if before.root_cause != current.root_cause:
        add(Change("root_cause_changed", "root_cause"))
    return result


def ensure_versions_table(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (version VARCHAR NOT NULL, "
        "published_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp, "
        "schema JSON NOT NULL, changes JSON NOT NULL)"
    )


def last_published(conn: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    ensure_versions_table(conn)
    rows = conn.execute(
        f"SELECT schema FROM {VERSIONS_TABLE} ORDER BY published_at DESC LIMIT 1"
    ).fetchall()
    return json.loads(rows[0][0]) if rows else None


def publish(conn: duckdb.DuckDBPyConnection, ontology: Ontology, changes: SchemaDiff) -> bool:
    """Record the version `changes` leads to when it differs from the last one (the one
    `changes` was taken against); True when a row was written."""
    if changes.previous_version == changes.version:
        return False
    ensure_versions_table(conn)
    conn.execute(
        f"INSERT INTO {VERSIONS_TABLE} (version, schema, changes) VALUES (?, ?, ?)",
        [
            changes.version,
            canonical(ontology),
            json.dumps([str(c) for c in changes.changes], ensure_ascii=False),
        ],
    )
    return True
