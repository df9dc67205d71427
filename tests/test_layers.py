"""Imports run one way (docs/architecture.md): each area of `dagster_platform` imports only the
areas below it, and the plain package never imports the Dagster layer (`assets`, `resources`,
`sensors`) except in `definitions.py`. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

from dagster_platform.settings import PACKAGE_DIR

BASE = {"settings", "lib"}
# each area and what it may import besides itself (the CLI is the top: it may import any area)
ALLOWED: dict[str, set[str]] = {
    "lib": {"settings"},
    "ingestion": BASE,
    "kafka": BASE,
    "llm": BASE,
    "ontology": BASE | {"kafka"},
    "knowledge": BASE | {"ingestion", "ontology"},
    "agents": BASE | {"ingestion", "kafka", "knowledge", "llm", "ontology"},
    "finetune": BASE | {"agents", "ingestion", "kafka", "knowledge", "llm", "ontology"},
    "deploy": BASE | {"ingestion", "kafka", "llm"},
    "console": BASE | {"agents", "deploy", "finetune", "kafka", "llm", "ontology"},
    "api": BASE | {"agents", "console", "deploy", "finetune", "kafka"},
}
DAGSTER_LAYER = {"assets", "resources", "sensors"}


def _imports(path: Path) -> set[str]:
    """Top-level names this module imports: `dagster_platform.X` gives X."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "dagster_platform":
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif parts[0] in DAGSTER_LAYER:
                found.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "dagster_platform" and len(parts) > 1:
                    found.add(parts[1])
                elif parts[0] in DAGSTER_LAYER:
                    found.add(parts[0])
    return found - {"__version__"}


def test_the_root_holds_only_definitions_settings_and_packages() -> None:
    modules = {p.name for p in PACKAGE_DIR.glob("*.py")}
    assert modules == {"__init__.py", "definitions.py", "settings.py"}
    areas = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    assert areas == set(ALLOWED) | {"cli"}


def test_each_area_imports_only_the_areas_below_it() -> None:
    wrong = []
    for area, allowed in ALLOWED.items():
        for path in sorted((PACKAGE_DIR / area).rglob("*.py")):
            for name in sorted(_imports(path) - allowed - {area}):
                wrong.append(f"{path.relative_to(PACKAGE_DIR)} imports {name}")
    assert wrong == []


def test_only_the_definitions_import_the_dagster_layer() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE_DIR)} imports {name}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path.name != "definitions.py" or path.parent != PACKAGE_DIR
        for name in sorted(_imports(path) & DAGSTER_LAYER)
    ]
    assert wrong == []


def test_settings_import_no_area() -> None:
    assert _imports(PACKAGE_DIR / "settings.py") == set()


def test_no_module_is_over_800_lines() -> None:
    """Past that a module holds more than one idea: split it along its seams."""
    long = {
        str(path.relative_to(PACKAGE_DIR)): lines
        for path in PACKAGE_DIR.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 800
    }
    assert long == {}
