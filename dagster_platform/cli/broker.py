"""`dagster-platform broker`: the embedded Kafka-compatible broker (Tansu) and the topics."""

from __future__ import annotations

from typing import Annotated

import typer

from dagster_platform.cli.common import fail
from dagster_platform.kafka.broker import BrokerError, EmbeddedBroker
from dagster_platform.kafka.topics import KafkaUnavailable, ensure_topics
from dagster_platform.settings import Settings, get_settings

broker_app = typer.Typer(help="The embedded Kafka-compatible broker (Tansu).", no_args_is_help=True)


def embedded_broker(settings: Settings, port: int | None) -> EmbeddedBroker:
    return EmbeddedBroker(port or settings.broker_port, settings.broker_dir)


@broker_app.command("start")
def broker_start(
    detach: Annotated[
        bool, typer.Option("--detach/--foreground", help="Run in the background with a pid file.")
    ] = False,
    port: Annotated[int | None, typer.Option(help="Default: DAGSTER_PLATFORM_BROKER_PORT.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait until it answers.")] = 30.0,
) -> None:
    """Start the embedded broker and create the platform topics."""
    settings = get_settings()
    if not settings.embedded_broker:
        raise fail(
            f"KAFKA_BOOTSTRAP_SERVERS is set ({settings.kafka_bootstrap_servers}); "
            "the embedded broker is not used. Unset it to run one."
        )
    broker = embedded_broker(settings, port)
    try:
        if detach:
            pid = broker.start(timeout=timeout)
            typer.echo(
                f"broker running (pid {pid}) on {broker.bootstrap_servers}; log {broker.log_file}"
            )
        else:
            raise typer.Exit(broker.run_foreground())
    except (BrokerError, KafkaUnavailable) as exc:
        raise fail(str(exc)) from exc


@broker_app.command("stop")
def broker_stop(port: Annotated[int | None, typer.Option()] = None) -> None:
    """Stop the background broker started with `broker start --detach`."""
    broker = embedded_broker(get_settings(), port)
    typer.echo("broker stopped" if broker.stop() else "no managed broker was running")


@broker_app.command("topics")
def broker_topics() -> None:
    """Create any missing platform topics on the configured broker (embedded or external)."""
    settings = get_settings()
    try:
        created = ensure_topics(settings.bootstrap_servers)
    except KafkaUnavailable as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")
