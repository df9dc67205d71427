"""`dagster-platform bench NAME`: one benchmark of benchmarks/, its figures as JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dagster_platform.cli.common import fail


def bench(
    name: Annotated[
        str,
        typer.Argument(
            help="answers, kafka-ingest, kafka-latency, knowledge, ontology, llm or finetune"
        ),
    ],
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
    typer.echo(json.dumps(module.run(), ensure_ascii=False))
