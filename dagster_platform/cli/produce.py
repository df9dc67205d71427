"""`dagster-platform produce`: the cluster simulator onto Kafka, on the wall clock by default
so that "current" in the data means now (`--clock simulated` for the seeded, repeatable run)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer

from dagster_platform.cli.common import fail
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.settings import get_settings

# kafka.simulator.Clock, spelt out: importing the simulator at start-up would load polars,
# whose SIGINT handling keeps a foreground broker from stopping on Ctrl-C
Clock = Literal["wall", "simulated"]


def produce(
    seed: Annotated[
        int, typer.Option(help="Seed: on the simulated clock, the same seed gives the same events.")
    ] = 7,
    clock: Annotated[
        Clock,
        typer.Option(
            help="wall: events stamped now, each tick covering the real time since the last; "
            "simulated: from the sample's snapshot time, 10 s a tick, repeatable per seed."
        ),
    ] = "wall",
    rate: Annotated[float, typer.Option(help="Ticks per second; 0: flat out.")] = 1.0,
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
            ClusterSimulator(settings.data_dir, seed=seed, clock=clock),
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
