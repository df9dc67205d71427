"""`dagster-platform feedback` and `dagster-platform serve`: rate an answer from the shell, or
serve the HTTP API (ask, feedback, status) to other tools."""

from __future__ import annotations

from typing import Annotated

import typer

from dagster_platform.cli.common import fail
from dagster_platform.settings import get_settings


def feedback(
    interaction_id: Annotated[
        str, typer.Argument(help="The id `ask` printed (id ia-...), or /ask returned.")
    ],
    rating: Annotated[str, typer.Option("--rating", help="up or down.")],
    correction: Annotated[
        str | None, typer.Option(help="The answer it should have been (trains the model).")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Why, in a few words.")] = None,
    user: Annotated[str | None, typer.Option(help="Who rates (recorded as the user id).")] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the broker to take it.")
    ] = 10.0,
) -> None:
    """Rate an answer; it lands with the `llm-feedback` stream (an unknown id is dead-lettered)."""
    from dagster_platform.finetune.feedback import (
        FeedbackPublisher,
        InvalidFeedback,
        build_feedback,
    )
    from dagster_platform.kafka.topics import KafkaUnavailable

    settings = get_settings()
    try:
        event = build_feedback(
            interaction_id,
            rating,
            correction=correction,
            comment=comment,
            user_id=user,
        )
    except InvalidFeedback as exc:
        raise fail(str(exc), code=2) from None
    try:
        FeedbackPublisher(settings.bootstrap_servers, timeout_s=timeout).publish(event)
    except KafkaUnavailable as exc:
        raise fail(f"{exc}; nothing was sent (is the broker running?)") from None
    typer.echo(event.feedback_id)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API: POST /ask, POST /ask/feedback, GET /status (all need an API key)."""
    import uvicorn

    from dagster_platform.api.app import configured_keys, create_app, create_local_key

    settings = get_settings()
    try:
        keys = configured_keys(settings)
        if not keys:
            path = create_local_key(settings)
            typer.echo(f"created an API key in {path} (owner-only); send it as X-API-Key")
            keys = configured_keys(settings)
        app = create_app(settings, api_keys=keys)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None
    uvicorn.run(app, host=host, port=port)
