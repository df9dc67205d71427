"""`dagster-platform produce`: the cluster simulator onto Kafka."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dagster_platform.cli.common import fail
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.settings import get_settings


def produce(
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same events.")] = 7,
    rate: Annotated[
        float, typer.Option(help="Ticks (10 simulated seconds each) per second; 0: flat out.")
    ] = 1.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    ticks: Annotated[int | None, typer.Option(help="Stop after this many ticks.")] = None,
    incident: Annotated[
        str | None, typer.Option(help="Inject at the start: cpu-spike or disk-full.")
    ] = None,
    incident_every: Annotated[
        float | None,
        typer.Option(help="Seconds between scheduled incidents (--incident, else cpu-spike)."),
    ] = None,
    cluster: Annotated[str, typer.Option(help="The cluster incidents hit.")] = "etl-prod",
) -> None:
    """Simulate the sample clusters onto Kafka (host metrics, Spark jobs, incidents, alerts) and
    apply the commands approved on ops-actions; runs until --duration, --ticks or Ctrl-C, then
    prints what it sent as one JSON object."""
    from dagster_platform.kafka.publisher import run_producer
    from dagster_platform.kafka.simulator import ClusterSimulator

    settings = get_settings()
    try:
        report = run_producer(
            settings.bootstrap_servers,
            ClusterSimulator(settings.data_dir, seed=seed),
            rate=rate,
            duration=duration,
            ticks=ticks,
            incident=incident,
            incident_every=incident_every,
            cluster=cluster,
        )
    except (KafkaUnavailable, ValueError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
