"""The console's HTML, built from data that is never trusted: every question, answer, fact,
passage, alert and action field is escaped before it reaches the page, so a document or an
alert carrying `<script>` or `<img onerror=…>` shows as that text and never runs. Only the
markup written here (lists, folds, cards) is markup.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from dagster_platform.agents.assistant import PASSAGE_CHARS, Answer
from dagster_platform.agents.tools import ToolResult
from dagster_platform.console.reads import ActionView, Incident, format_time
from dagster_platform.finetune.promotion import Promotion
from dagster_platform.ontology.actions import ActionStatus

TITLE = "dagster-platform ops console"
GUIDE_SOURCES = ("runbook", "incident")
STATUS_MARK = {
    "proposed": "awaiting approval",
    "approved": "approved, running",
    "executed": "executed",
    "failed": "failed",
    "rejected": "rejected",
}


def esc(value: Any) -> str:
    """Text as HTML that shows it literally; line breaks kept, so a passage's blank line can
    never end the HTML block and hand the rest to the Markdown renderer."""
    text = html.escape("" if value is None else str(value), quote=True)
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def _fold(summary: str, body: str, css: str) -> str:
    return f'<details class="{css}"><summary>{esc(summary)}</summary>{body}</details>'


def evidence_html(results: Sequence[ToolResult]) -> str:
    """The tools' facts, and what a tool could not get, folded."""
    facts = [fact for r in results if r.ok for fact in r.facts]
    failures = [f"{r.tool}: {r.error}" for r in results if not r.ok]
    if not facts and not failures:
        return ""
    items = "".join(f"<li>{esc(f)}</li>" for f in facts)
    items += "".join(f'<li class="failed">could not get {esc(f)}</li>' for f in failures)
    tools = ", ".join(dict.fromkeys(r.tool for r in results))
    return _fold(f"Evidence: {len(facts)} facts from {tools}", f"<ul>{items}</ul>", "evidence")


def passages_html(results: Sequence[ToolResult]) -> str:
    """The cited runbook and incident passages with their ids, folded."""
    passages = [c for r in results if r.ok for c in r.contexts if c.source in GUIDE_SOURCES]
    if not passages:
        return ""
    items = "".join(
        f'<li><b class="citation">[{n}] {esc(c.citation or c.id)}</b>'
        f"<blockquote>{esc(c.text[:PASSAGE_CHARS].strip())}</blockquote></li>"
        for n, c in enumerate(passages, start=1)
    )
    ids = ", ".join(dict.fromkeys(c.citation or c.id for c in passages))
    return _fold(f"Cited passages: {ids}", f"<ol>{items}</ol>", "passages")


def served_by_html(answer: Answer) -> str:
    """Which model, adapter and backend answered (or that none did), and the record's id."""
    record = answer.interaction
    if record.model is None:
        model = "no LLM: composed from the tools' facts"
    else:
        adapter = (
            f"adapter {record.adapter} v{record.adapter_version}"
            if record.adapter
            else "no adapter (base model)"
        )
        model = f"model {record.model} · {adapter} · backend {record.backend}"
    latency = f" · {record.latency_ms / 1000:.2f} s" if record.latency_ms else ""
    degraded = (
        f'<div class="degraded">LLM unavailable: {esc(record.llm_error)}</div>'
        if record.llm_error
        else ""
    )
    return (
        f'<div class="served-by">{esc(model)} · route {esc(record.route)} '
        f"({esc(record.route_source)}) · headline {esc(record.headline_source)}{latency} · "
        f'<code class="interaction-id">{esc(record.interaction_id)}</code></div>{degraded}'
    )


def answer_stream(answer: Answer, proposals: Sequence[ActionView] = ()) -> list[str]:
    """The answer's message after each part is ready, in order: the headline, then the
    evidence, the cited passages, the proposals, and who answered."""
    headline = f'<div class="headline">{esc(answer.interaction.headline or answer.text)}</div>'
    parts = [headline, evidence_html(answer.results), passages_html(answer.results)]
    parts.append("".join(proposal_in_chat(v) for v in proposals))
    parts.append(served_by_html(answer))
    shown: list[str] = []
    for part in parts:
        if part or not shown:
            shown.append((shown[-1] if shown else "") + part)
    return shown


def _preconditions(view: ActionView) -> str:
    items = "".join(f"<li>{esc(p)}</li>" for p in view.preconditions) or "<li>none</li>"
    return f"<ul>{items}</ul>"


def proposal_in_chat(view: ActionView) -> str:
    """The card of a proposal inside the conversation; decided in the proposals list."""
    status = view.status
    return (
        f'<div class="proposal-card" data-action="{esc(status.action_id)}">'
        f"<b>Proposed: {esc(status.action_type)}</b> on {esc(status.target_type)} "
        f"<code>{esc(status.target_key)}</code><br>why: {esc(status.why)} · proposed by "
        f"{esc(status.proposed_by)}<br>preconditions:{_preconditions(view)}"
        f"<i>{esc(STATUS_MARK.get(status.status, status.status))}</i> · "
        f"<code>{esc(status.action_id)}</code> (decide under Proposals)</div>"
    )


def action_card(view: ActionView) -> str:
    """The card of an action in the proposals list: what, target, why, who, preconditions,
    its outcome, and for whoever may not decide it, why not."""
    status = view.status
    outcome = ""
    if status.status not in ("proposed",):
        outcome = (
            f'<div class="outcome">{esc(status.status)} by {esc(status.last_actor)} at '
            f"{esc(format_time(status.updated_at))}: {esc(status.detail)}</div>"
        )
    # an executed command reaches the target first; its new state lands with its next event
    lag = (
        "; an executed action shows here once the target reports it (tens of seconds)"
        if status.status == "executed"
        else ""
    )
    state = (
        f'<div class="target-state">{esc(status.target_type)} state now: '
        f"<b>{esc(view.target_state)}</b> (as the tools read it{lag})</div>"
        if view.target_state
        else ""
    )
    read_only = (
        f'<div class="read-only">read only: {esc(view.why_not)}</div>'
        if view.why_not and (view.open or view.retryable)
        else ""
    )
    return (
        f'<div class="action-card status-{esc(status.status)}" id="card-{esc(status.action_id)}">'
        f'<div class="status">{esc(STATUS_MARK.get(status.status, status.status))}</div>'
        f"<b>{esc(status.action_type)}</b> on {esc(status.target_type)} "
        f"<code>{esc(status.target_key)}</code><br>why: {esc(status.why)}<br>"
        f"proposed by {esc(status.proposed_by)} at {esc(format_time(status.proposed_at))} · "
        f"approver role <code>{esc(view.approver_role)}</code><br>parameters: "
        f"{esc(', '.join(f'{k}={v}' for k, v in status.parameters.items()) or 'none')}<br>"
        f"preconditions:{_preconditions(view)}{outcome}{state}{read_only}"
        f'<code class="action-id">{esc(status.action_id)}</code></div>'
    )


def outcome_message(status: ActionStatus, user: str) -> str:
    """The line the conversation gets when a decision has run."""
    mark = STATUS_MARK.get(status.status, status.status)
    retry = " It can be retried from the proposals list." if status.retryable else ""
    return (
        f'<div class="outcome-message">{esc(mark)}: {esc(status.action_id)} '
        f"({esc(status.action_type)} on {esc(status.target_key)}), by {esc(user)}: "
        f"{esc(status.detail)}{esc(retry)}</div>"
    )


def refusal_message(action_id: str, why: str) -> str:
    return f'<div class="refused">refused: {esc(action_id)}: {esc(why)}</div>'


def promotions_html(promotions: Sequence[Promotion]) -> str:
    if not promotions:
        return "<p>No promotion decided yet.</p>"
    rows = "".join(
        f"<tr><td>{esc(format_time(p.decided_at))}</td><td>{esc(p.action)}</td>"
        f"<td>{esc(p.challenger_version)}</td><td>{esc(p.champion_before or 'base')} → "
        f"{esc(p.champion_after or 'base')}</td><td>{esc('; '.join(p.reasons))}</td>"
        f"<td>{esc(p.actor)}</td></tr>"
        for p in promotions
    )
    return (
        '<table class="promotions"><tr><th>decided</th><th>action</th><th>challenger</th>'
        f"<th>champion</th><th>reasons</th><th>by</th></tr>{rows}</table>"
    )


def incidents_html(incidents: Sequence[Incident], statuses: dict[str, str]) -> str:
    if not incidents:
        return "<p>No alert has landed yet.</p>"
    rows = []
    for incident in incidents:
        alert = incident.alert
        actions = ", ".join(f"{a} ({statuses.get(a, '?')})" for a in incident.action_ids) or "none"
        rows.append(
            f"<tr><td>{esc(format_time(alert['ts']))}</td><td>{esc(alert['severity'])}</td>"
            f"<td><code>{esc(incident.alert_id)}</code></td><td>{esc(alert['rule'])}</td>"
            f"<td>{esc(alert['cluster_id'])} {esc(alert['host_id'] or '')}</td>"
            f"<td>{esc(alert['metric'])} {esc(alert['value'])} &gt; {esc(alert['threshold'])}"
            f"</td><td>{esc(alert['message'])}</td>"
            f"<td>{'report' if incident.report else 'no report yet'}</td>"
            f"<td>{esc(actions)}</td></tr>"
        )
    return (
        '<table class="incidents"><tr><th>at</th><th>severity</th><th>alert</th><th>rule</th>'
        "<th>where</th><th>reading</th><th>message</th><th>report</th><th>proposed actions</th>"
        f"</tr>{''.join(rows)}</table>"
    )


def markdown_as_text(markdown: str) -> str:
    """A Markdown report whose data may carry HTML: the markup characters escaped, so Markdown
    still renders its tables and emphasis and any tag shows as text."""
    return markdown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
