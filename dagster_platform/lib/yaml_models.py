"""Configuration files as typed models: one reader for the gate, the recipe and the roles, so
every such file fails the same way, with its name and the field at fault."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """Pydantic's errors as `field: message`; an unknown top-level field also lists the known
    ones, since a misspelt field is the usual cause."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top)"
        part = f"{field}: {error['msg']}"
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            part += f"; unknown field {field!r} (known fields: {', '.join(model.model_fields)})"
        parts.append(part)
    return "; ".join(parts)


def load_model(
    path: Path,
    model: type[Model],
    error: type[Exception],
    *,
    name: str,
    expected: str,
    shape: str,
) -> Model:
    """`path` parsed as YAML and validated as `model`; any problem raises `error` naming the
    file (`name`: what the file is, e.g. "gate file"; `expected`: what a missing file would
    have held; `shape`: what its top level must look like)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{name} {path} does not exist (no {expected} there)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{name} {path}: could not be read ({exc})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{name} {path}: could not be read, not valid YAML ({exc})") from None
    if not isinstance(document, dict):
        raise error(f"{name} {path}: {shape}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise error(f"{name} {path}: {describe(exc, model)}") from None
