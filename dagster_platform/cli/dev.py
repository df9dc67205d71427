"""`dagster-platform dev`: the local platform — the embedded broker, the local vLLM server,
the simulator and `dagster dev` with its home in the state folder — until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

from dagster_platform.cli.broker import embedded_broker
from dagster_platform.cli.common import fail
from dagster_platform.cli.produce import Clock
from dagster_platform.kafka.broker import BrokerError
from dagster_platform.kafka.topics import KafkaUnavailable, ensure_topics
from dagster_platform.llm.service import local_vllm_server
from dagster_platform.llm.vllm_local import LocalVLLMServer, VLLMError, wait_in_background
from dagster_platform.settings import REPO_ROOT, Settings, get_settings


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
    clock: Annotated[
        Clock,
        typer.Option(help="The simulator's clock: wall (events stamped now) or simulated."),
    ] = "wall",
    incident_every: Annotated[
        float, typer.Option(help="Seconds between simulated cpu-spike incidents.")
    ] = 600.0,
    vllm: Annotated[
        bool,
        typer.Option(
            "--vllm/--no-vllm",
            help="Start the local vLLM server (unless LLM_BACKEND or VLLM_BASE_URL say "
            "otherwise); --no-vllm answers with transformers in process.",
        ),
    ] = True,
    api_port: Annotated[
        int,
        typer.Option(help="Port of the HTTP API and the ops console (/ui); 0 serves neither."),
    ] = 8000,
) -> None:
    """Run the local platform: the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), the
    local vLLM server, the cluster simulator, the HTTP API with the ops console, and
    `dagster dev` with DAGSTER_HOME in the state folder."""
    from dagster_platform.deploy.instance import write_instance_config

    settings = get_settings()
    home = write_instance_config(settings)
    broker = embedded_broker(settings, None) if settings.embedded_broker else None
    try:
        if broker is not None:
            pid = broker.start()
            typer.echo(f"embedded broker on {broker.bootstrap_servers} (pid {pid})")
        else:
            ensure_topics(settings.bootstrap_servers)
    except (BrokerError, KafkaUnavailable) as exc:
        raise fail(str(exc)) from exc
    server, llm_env = _start_vllm(settings) if vllm else (None, {"LLM_BACKEND": "transformers"})
    env = {
        **os.environ,
        **llm_env,
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
             "--clock", clock, "--incident-every", str(incident_every)],
            env,
        )  # fmt: skip
    api = None
    if api_port:
        api = _spawn(
            [sys.executable, "-m", "dagster_platform.cli", "serve", "--host", host,
             "--port", str(api_port)],
            env,
        )  # fmt: skip
        typer.echo(f"ops console on http://{host}:{api_port}/ui (the API beside it)")
    try:
        code = _run_until_stopped(_spawn(command, env))
    finally:
        if api is not None:
            _stop(api, timeout=15)
        if producer is not None:
            _stop(producer, timeout=15)
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
    raise typer.Exit(code)


def _start_vllm(settings: Settings) -> tuple[LocalVLLMServer | None, dict[str, str]]:
    """Start the local vLLM server without waiting for it (readiness is reported when it
    comes); the server this launcher must stop, and the environment its children need. Where
    it cannot start, say why and answer with transformers instead."""
    if settings.llm_backend not in ("auto", "vllm-server") or settings.vllm_base_url:
        return None, {}
    server = local_vllm_server(settings)
    try:
        server.environment.ensure(echo=typer.echo)
        adopted = server.process.running_pid() is not None
        pid = server.spawn()
    except VLLMError as exc:
        typer.secho(
            f"vLLM not started: {exc}\nanswering with the transformers backend instead "
            "(LLM_BACKEND=transformers)",
            err=True,
            fg=typer.colors.YELLOW,
        )
        return None, {"LLM_BACKEND": "transformers"}
    typer.echo(
        f"vLLM server starting on {server.base_url} (pid {pid}); log {server.process.log_file}"
    )
    wait_in_background(server, timeout=600, report=typer.echo)
    return (None if adopted else server), {"LLM_BACKEND": "vllm-server"}


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
