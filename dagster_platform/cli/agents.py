"""`dagster-platform ask`: a question to the routed agents, answered from the warehouse,
the ontology and the knowledge base, and logged as an interaction."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dagster_platform.cli.common import JsonOption, fail
from dagster_platform.settings import get_settings


def ask(
    question: Annotated[str, typer.Argument(help="The question, in Korean or English.")],
    session: Annotated[
        str | None,
        typer.Option("--session", help="Continue a session: follow-ups refer to its last turn."),
    ] = None,
    as_json: JsonOption = False,
    planner: Annotated[
        str, typer.Option(help="rules (entity linking) or llm (the model proposes tool calls).")
    ] = "rules",
    use_llm: Annotated[
        bool, typer.Option("--llm/--no-llm", help="Use the LLM for routing and the summary.")
    ] = True,
) -> None:
    """Ask the ops assistant; kill requests only ever become proposals awaiting approval."""
    from dagster_platform.agents.assistant import Assistant, AssistantConfig, QuestionRejected

    if planner not in ("rules", "llm"):
        raise fail(f"unknown planner {planner!r}: rules or llm")
    settings = get_settings()
    if not settings.warehouse_path.exists():
        raise fail(f"no warehouse at {settings.warehouse_path}: run `make run` first")
    assistant = Assistant.open(
        settings, AssistantConfig(planner=planner, actor="assistant"), use_llm=use_llm
    )
    try:
        answer = assistant.ask(question, session)
    except QuestionRejected as exc:
        raise fail(f"{exc} (logged as {exc.interaction_id})", code=2) from None
    finally:
        assistant.close()
    record = answer.interaction
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2, default=str))
        return
    typer.echo(answer.text)
    served = record.model or "no LLM"
    if record.adapter:
        served += f" + {record.adapter}"
    typer.secho(
        f"\n[{record.route} via {record.route_source}; {served}; "
        f"{record.latency_ms:.0f} ms; session {record.session_id}; id {record.interaction_id}]",
        dim=True,
    )
    if record.llm_error:
        typer.secho(f"LLM: {record.llm_error}", err=True, fg=typer.colors.YELLOW)
