"""The code location's shape as plain data: every asset with its group, dependencies, checks,
automation, pools, partitions, tags and owners, and the jobs, sensors and schedules. A move that
drops or rewires an asset changes it, so `tests/test_definitions.py` holds it against the
snapshot in `tests/snapshots/asset_graph.json`.

After an intended change, write the new snapshot (from a clean environment, as the tests have):
`python -m tests.support.graph_snapshot > tests/snapshots/asset_graph.json`.
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

SNAPSHOT_FILE = "asset_graph.json"


def _tree(condition: dg.AutomationCondition) -> str:
    """The condition as its nested names, so a change anywhere in its structure shows."""
    children = ", ".join(_tree(child) for child in condition.children)
    name = condition.get_label() or condition.name
    return f"{name}({children})" if children else name


def graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=dg.AssetKey.to_user_string):
        node = graph.get(key)
        condition = node.automation_condition
        checks = graph.get_check_keys_for_assets({key})
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted([c.name, graph.get_check_spec(c).blocking] for c in checks),
            "automation": None if condition is None else _tree(condition),
            "pools": sorted(node.pools or ()),
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "tags": dict(sorted(node.tags.items())),
            "owners": sorted(node.owners),
            "op_tags": sorted(defs.resolve_assets_def(key).op.tags),
        }
    repository = defs.get_repository_def()
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in repository.get_all_jobs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in repository.sensor_defs),
        "schedules": sorted(s.name for s in repository.schedule_defs),
    }


def main() -> None:
    from dagster_platform.definitions import defs

    print(json.dumps(graph_snapshot(defs()), indent=1, ensure_ascii=False, sort_keys=True))


if __name__ == "__main__":
    main()
