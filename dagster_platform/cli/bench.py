"""`dagster-platform bench NAME`: one benchmark of benchmarks/, its figures as JSON."""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

import typer

from dagster_platform.cli.common import fail


def bench(
    name: Annotated[
        str,
        typer.Argument(
            help="answers, kafka-ingest, kafka-latency, knowledge, ontology, llm, finetune or "
            "streaming"
        ),
    ],
    options: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE for one of the benchmark's parameters (see its run()), e.g. "
            "--set minutes=5; repeatable.",
        ),
    ] = None,
) -> None:
    """Run one benchmark of benchmarks/ and print its figures as one JSON object."""
    import importlib
    import pkgutil

    import benchmarks

    available = sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name != "common"
    )
    if name not in available:
        raise fail(f"unknown benchmark {name!r}; available: {', '.join(available)}")
    module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
    kwargs = _parameters(module.run, options or [], name)
    typer.echo(json.dumps(module.run(**kwargs), ensure_ascii=False))


def _parameters(run: Any, options: list[str], name: str) -> dict[str, Any]:
    """`--set` values, typed as the parameter's default is; unknown keys are refused."""
    accepted = {
        p.name: p.default
        for p in inspect.signature(run).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    kwargs: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            raise fail(f"bench {name} takes --set KEY=VALUE with KEY one of: {known}")
        default = accepted[key]
        try:
            if isinstance(default, bool):
                kwargs[key] = text.strip().lower() in {"1", "true", "yes", "on"}
            elif isinstance(default, int | float):
                kwargs[key] = type(default)(text)
            else:
                kwargs[key] = text
        except ValueError as exc:
            raise fail(f"--set {key}: {text!r} is not a {type(default).__name__}") from exc
    return kwargs
