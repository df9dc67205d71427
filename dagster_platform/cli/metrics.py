"""`dagster-platform metrics`: a Prometheus exporter for where the API does not run."""

from __future__ import annotations

from typing import Annotated

import typer

from dagster_platform.cli.common import fail


def metrics_exporter(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the exporter.")] = 9464,
) -> None:
    """Serve the Prometheus metrics of every process (landing runs, the API) for scraping, where
    the API with its own /metrics does not run; until Ctrl-C."""
    from dagster_platform.lib import metrics

    folder = metrics.metrics_dir()
    try:
        stop = metrics.serve(host, port, folder)
    except OSError as exc:
        raise fail(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    typer.echo(f"serving the metrics of {folder} on http://{host}:{port}/metrics")
    try:
        metrics.wait_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
