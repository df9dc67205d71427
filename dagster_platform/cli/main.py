"""`dagster-platform`: what is not a materialization (broker, models, status, local dev).

Materializations go through Dagster's own CLI and UI.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from dagster_platform.cli import (
    actions,
    adapters,
    agents,
    bench,
    broker,
    demo,
    dev,
    feedback,
    knowledge,
    metrics,
    models,
    ontology,
    produce,
    status,
    users,
    vllm,
)
from dagster_platform.lib.logs import configure_cli_logging
from dagster_platform.settings import get_settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
# one line per command group or command; each lives in its own module
app.add_typer(broker.broker_app, name="broker")
app.add_typer(vllm.vllm_app, name="vllm")
app.add_typer(models.models_app, name="models")
app.add_typer(ontology.ontology_app, name="ontology")
app.add_typer(actions.actions_app, name="actions")
app.add_typer(knowledge.knowledge_app, name="knowledge")
app.add_typer(adapters.adapters_app, name="adapters")
app.add_typer(users.users_app, name="users")
app.command("ask")(agents.ask)
app.command("feedback")(feedback.feedback)
app.command("serve")(feedback.serve)
app.command("status")(status.status)
app.command("metrics")(metrics.metrics_exporter)
app.command("produce")(produce.produce)
app.command("bench")(bench.bench)
app.command("demo")(demo.demo)
app.command("dev")(dev.dev)


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the log lines on stderr too.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Level of the JSON log lines.")] = "INFO",
) -> None:
    """Log lines go to `<state>/logs/cli.log`; the terminal gets what each command did."""
    if not verbose:  # model loading draws progress bars; a command's output is its result
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    settings = get_settings()
    log_file = settings.logs_dir / "cli.log"
    configure_cli_logging(log_level.upper(), log_file=log_file, verbose=verbose)
    if settings.webhook_url:  # approvals from the terminal are announced too
        from dagster_platform.console import notify

        notify.install(settings.webhook_url)
