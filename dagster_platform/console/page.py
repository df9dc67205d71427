"""The console page: Gradio 6 Blocks with the assistant, its proposals, feedback, the latest
incidents and the loop.

The page holds no authority. Each event runs here on the server as the user the session cookie
names (Gradio's `auth_dependency` puts it on the request), through the functions the CLI and
the API use: `Assistant.ask`, `ontology.actions.approve/reject/retry` with the roles file read
at that moment, `build_feedback` + `FeedbackPublisher`. Buttons a user may not press are shown
disabled with the reason, but a request that presses them anyway meets the same refusal, and
the refusal is audited in the action log.

The assistant answers in one piece (it has no token streaming), so the page streams the answer
by parts as they are composed: the headline first, then the evidence, the cited passages, the
proposals and who answered.
"""

import html
import threading
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, Protocol

import gradio as gr

from dagster_platform.agents.assistant import Assistant, QuestionRejected
from dagster_platform.console import reads, views
from dagster_platform.console.views import TITLE
from dagster_platform.deploy.status import broker_status
from dagster_platform.finetune.feedback import FeedbackPublisher, InvalidFeedback, build_feedback
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.ontology import actions
from dagster_platform.ontology.effects import EFFECT_TIMEOUT_S
from dagster_platform.ontology.loader import LoadedOntology, load_ontology
from dagster_platform.ontology.roles import Roles, load_roles
from dagster_platform.settings import Settings

log = get_logger(__name__)

REFRESH_S = 5.0
CSS = """
.headline { font-weight: 600; margin-bottom: .4em; }
.served-by { color: var(--body-text-color-subdued); font-size: .85em; margin-top: .4em; }
.degraded, .refused, .read-only, .unavailable { color: #b45309; }
.action-card, .proposal-card { border: 1px solid var(--border-color-primary);
  border-radius: 6px; padding: .5em; margin: .3em 0; }
.action-card .status { float: right; font-weight: 600; }
.status-executed { border-left: 4px solid #16a34a; }
.status-failed { border-left: 4px solid #dc2626; }
.status-proposed { border-left: 4px solid #2563eb; }
table.promotions td, table.incidents td { vertical-align: top; padding: 2px 6px; }
"""


class ConsoleServices(Protocol):
    """What the console shares with the HTTP API: the one assistant and feedback producer."""

    settings: Settings
    assistant: Assistant | None

    def open_assistant(self) -> Assistant: ...

    def publisher(self) -> FeedbackPublisher: ...


def _user(request: gr.Request | None) -> str:
    user = getattr(request, "username", None)
    if not user:
        raise gr.Error("Your session has ended: sign in again.")
    return str(user)


class ConsolePage:
    """Builds the Blocks and answers their events."""

    def __init__(
        self,
        services: ConsoleServices,
        path: str = "/ui",
        effect_timeout_s: float = EFFECT_TIMEOUT_S,
    ):
        self.services = services
        self.settings = services.settings
        self.path = path
        self.effect_timeout_s = effect_timeout_s
        self._loaded: LoadedOntology | None = None
        self._lock = threading.Lock()

    # --- what every handler needs ------------------------------------------------------------

    def ontology(self) -> LoadedOntology:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_ontology(self.settings.ontology_dir)
            return self._loaded

    def roles(self) -> Roles:
        """Read at every decision, so a role taken away counts at once."""
        return load_roles(self.settings.roles_file)

    def cards(self, user: str) -> list[dict[str, Any]]:
        try:
            found = reads.actions_for(self.settings, self.ontology(), self.roles(), user)
        except reads.Unavailable as exc:
            return [{"html": f'<p class="unavailable">{views.esc(exc)}</p>', "id": None}]
        return [
            {
                "id": v.action_id,
                "html": views.action_card(v),
                "open": v.open,
                "retryable": v.retryable,
                "can_decide": v.can_decide,
            }
            for v in found
        ]

    def feedback_line(self) -> str:
        try:
            return views.esc(reads.loop_schedule(self.settings).describe())
        except reads.Unavailable as exc:
            return f'<span class="unavailable">{views.esc(exc)}</span>'

    def availability(self) -> str:
        """What works and what does not, so a down broker or LLM is named, not guessed."""
        lines = []
        if not self.settings.warehouse_path.exists():
            lines.append(f"warehouse: none at {self.settings.warehouse_path}")
        broker = broker_status(self.settings)
        if not broker.get("reachable"):
            lines.append(
                f"Kafka at {broker['bootstrap_servers']} unavailable: feedback cannot be queued "
                "and approved actions fail until it is back (then Retry)"
            )
        assistant = self.services.assistant
        if assistant is None:
            llm = "the assistant opens on the first question"
        elif assistant.llm is not None:
            served = assistant.llm.client.served
            llm = f"serving {served.label} on {served.backend}"
        elif assistant.llm_error:
            llm = "no LLM"
            lines.append(
                f"LLM unavailable ({assistant.llm_error}): headlines are composed from the facts"
            )
        else:
            llm = "answering without an LLM: headlines are composed from the facts"
        problems = "".join(f'<li class="unavailable">{views.esc(line)}</li>' for line in lines)
        return (
            f'<div class="availability"><ul>{problems}</ul><span>{views.esc(llm)}; webhook '
            f"{'configured' if self.settings.webhook_url else 'not configured'}</span></div>"
        )

    # --- events --------------------------------------------------------------------------------

    def on_load(self, request: gr.Request) -> tuple[str, str, str, list, str]:
        user = _user(request)
        held = ", ".join(self.roles().users.get(user, ())) or "no role"
        header = (
            f'<div class="signed-in">Signed in as <b id="signed-in-user">{views.esc(user)}</b> '
            f'({views.esc(held)}) · <a id="sign-out" href="{self.path}/logout">Sign out</a></div>'
        )
        session_id = f"console-{uuid.uuid4().hex[:12]}"
        return header, session_id, self.availability(), self.cards(user), self.feedback_line()

    def refresh(self, request: gr.Request) -> list:
        return self.cards(_user(request))

    def ask(
        self,
        question: str,
        history: list,
        session_id: str,
        answer_ids: dict,
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Answer in the conversation, streamed part by part; the proposals list follows."""
        user = _user(request)
        history = [*history, {"role": "user", "content": views.esc(question)}]
        answer_ids = dict(answer_ids)
        pending = '<div class="pending">…</div>'
        yield [*history, {"role": "assistant", "content": pending}], "", answer_ids, gr.skip()
        reply, record_id = self._answer(question, session_id, user)
        index = len(history)
        for part in reply:
            yield [*history, {"role": "assistant", "content": part}], "", answer_ids, gr.skip()
        history = [*history, {"role": "assistant", "content": reply[-1]}]
        if record_id:
            answer_ids[str(index)] = record_id
        choices = [(label, ia) for ia, label in self._labels(answer_ids, history)]
        dropdown = gr.update(choices=choices, value=choices[-1][1] if choices else None)
        yield history, "", answer_ids, dropdown

    def _answer(self, question: str, session_id: str, user: str) -> tuple[list[str], str]:
        """The streamed parts of the answer, and its interaction id."""
        if not self.settings.warehouse_path.exists():
            return [views.refusal_message("question", "no warehouse yet")], ""
        try:
            assistant = self.services.open_assistant()
            answer = assistant.ask(question, session_id)
        except QuestionRejected as exc:
            return [views.refusal_message(exc.interaction_id, str(exc))], ""
        proposed = answer.interaction.proposed_actions
        shown = []
        if proposed:
            try:
                shown = reads.actions_for(
                    self.settings, self.ontology(), self.roles(), user, action_ids=proposed
                )
            except reads.Unavailable:
                shown = []
        return views.answer_stream(answer, shown), answer.interaction_id

    @staticmethod
    def _labels(answer_ids: dict, history: list) -> list[tuple[str, str]]:
        labelled = []
        for index, interaction_id in sorted(answer_ids.items(), key=lambda kv: int(kv[0])):
            asked = history[int(index) - 1]["content"] if int(index) > 0 else ""
            text = html.unescape(str(asked).replace("<br>", " "))
            labelled.append((interaction_id, f"{text[:60]} ({interaction_id})"))
        return labelled

    def rate(self, data: gr.LikeData, answer_ids: dict, request: gr.Request) -> str:
        """A thumb on an answer: up or down onto `llm-feedback`, as the CLI sends it."""
        user = _user(request)
        index = data.index[0] if isinstance(data.index, list | tuple) else data.index
        interaction_id = answer_ids.get(str(index))
        if interaction_id is None or not isinstance(data.liked, bool):
            return "Only the assistant's answers can be rated."
        return self._send(interaction_id, "up" if data.liked else "down", None, user)

    def correct(
        self, interaction_id: str | None, correction: str, request: gr.Request
    ) -> tuple[str, Any]:
        user = _user(request)
        if not interaction_id:
            return "Ask a question first, then correct its answer.", gr.skip()
        line = self._send(interaction_id, "down", correction, user)
        return line, ("" if line.startswith("Queued") else gr.skip())

    def _send(self, interaction_id: str, rating: str, correction: str | None, user: str) -> str:
        try:
            event = build_feedback(interaction_id, rating, correction=correction, user_id=user)
            self.services.publisher().publish(event)
        except InvalidFeedback as exc:
            return f"Not sent: {exc}"
        except KafkaUnavailable as exc:
            return f"Not queued (nothing was sent; try again when Kafka is back): {exc}"
        what = "correction" if correction else f"rating {rating}"
        return (
            f"Queued: {what} on {interaction_id} as {event.feedback_id} (llm-feedback). "
            f"{self.feedback_line()}"
        )

    def decision(self, kind: str, action_id: str) -> Callable[..., tuple]:
        """The handler of one card's Approve, Reject or Retry button."""

        def decide(history: list, why: str, request: gr.Request) -> tuple:
            user = _user(request)
            message = self._decide(kind, action_id, user, why)
            history = [*history, {"role": "assistant", "content": message}]
            return self.cards(user), history

        def retry(history: list, request: gr.Request) -> tuple:
            return decide(history, "", request)

        return retry if kind == "retry" else decide

    def _decide(self, kind: str, action_id: str, user: str, why: str) -> str:
        loaded, roles = self.ontology(), self.roles()
        try:
            with open_warehouse(self.settings.warehouse_path) as conn:
                if kind == "reject":
                    status = actions.reject(conn, loaded, roles, action_id, user, why)
                else:
                    step = actions.approve if kind == "approve" else actions.retry
                    status = step(
                        conn,
                        loaded,
                        roles,
                        action_id,
                        user,
                        bootstrap_servers=self.settings.bootstrap_servers,
                        yarn_url=self.settings.yarn_resource_manager_url,
                        timeout=self.effect_timeout_s,
                    )
        except actions.ActionError as exc:
            log.info("console decision refused", extra={"action_id": action_id, "user": user})
            return views.refusal_message(action_id, str(exc).removeprefix(f"{action_id}: "))
        return views.outcome_message(status, user)

    def incidents(self, request: gr.Request) -> tuple[str, Any]:
        user = _user(request)
        try:
            found = reads.latest_incidents(self.settings)
            statuses = {
                v.action_id: v.status.status
                for v in reads.actions_for(
                    self.settings,
                    self.ontology(),
                    self.roles(),
                    user,
                    action_ids=[a for i in found for a in i.action_ids],
                )
            }
        except reads.Unavailable as exc:
            return f'<p class="unavailable">{views.esc(exc)}</p>', gr.update(choices=[])
        choices = [i.alert_id for i in found if i.report]
        return views.incidents_html(found, statuses), gr.update(
            choices=choices, value=choices[0] if choices else None
        )

    def incident_report(self, alert_id: str | None, request: gr.Request) -> str:
        _user(request)
        if not alert_id:
            return ""
        path = reads.reports_dir(self.settings) / f"{alert_id}.md"
        if path.parent.resolve() != reads.reports_dir(self.settings).resolve():
            return ""
        if not path.is_file():
            return "No report for this alert yet."
        return views.markdown_as_text(path.read_text(encoding="utf-8"))

    def loop(self, request: gr.Request) -> tuple[str, str, str, Any]:
        _user(request)
        try:
            state = reads.loop_state(self.settings)
        except reads.Unavailable as exc:
            return f'<p class="unavailable">{views.esc(exc)}</p>', "", "", None
        champion = f'<p>Champion: <b id="champion">{views.esc(state.champion)}</b></p>'
        if state.evaluation_markdown is None:
            evaluation = "No evaluation yet: the loop has not evaluated a challenger."
        else:
            evaluation = f"**Last evaluation ({state.evaluation_name})**\n\n"
            evaluation += views.markdown_as_text(state.evaluation_markdown)
        chart = None
        if state.evaluation_chart:
            from PIL import Image

            chart = Image.open(BytesIO(state.evaluation_chart))
        return champion, views.promotions_html(state.promotions), evaluation, chart

    # --- the layout ----------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
            session_id = gr.State("")
            answer_ids = gr.State({})
            cards = gr.State([])
            with gr.Row():
                gr.HTML(f"<h2>{TITLE}</h2>")
                header = gr.HTML(elem_id="header")
            with gr.Row(equal_height=True):
                availability = self._availability = gr.HTML(elem_id="availability")
                recheck = gr.Button("Check again", size="sm", elem_id="recheck", scale=0)
            with gr.Tabs():
                with gr.Tab("Assistant", id="assistant"), gr.Row():
                    with gr.Column(scale=3):
                        chat = self._chat_column(session_id, answer_ids, cards)
                    with gr.Column(scale=2):
                        gr.Markdown("### Proposals")
                        self._proposals(cards, chat)
                with gr.Tab("Incidents", id="incidents") as incidents_tab:
                    incidents = gr.HTML(elem_id="incidents")
                    report_of = gr.Dropdown(label="Report of alert", elem_id="report-of")
                    report = gr.Markdown(elem_id="incident-report")
                with gr.Tab("The loop", id="loop") as loop_tab:
                    champion = gr.HTML(elem_id="loop-champion")
                    promotions = gr.HTML(elem_id="promotions")
                    evaluation = gr.Markdown(elem_id="evaluation")
                    chart = gr.Image(
                        label="Evaluation",
                        type="pil",
                        elem_id="evaluation-chart",
                        buttons=["download", "fullscreen"],
                        interactive=False,
                    )
            page.load(
                self.on_load,
                None,
                [header, session_id, availability, cards, self._feedback_status],
            )
            recheck.click(self.availability, None, availability)
            gr.Timer(REFRESH_S).tick(self.refresh, None, cards, show_progress="hidden")
            incidents_tab.select(self.incidents, None, [incidents, report_of])
            report_of.change(self.incident_report, report_of, report)
            loop_tab.select(self.loop, None, [champion, promotions, evaluation, chart])
        page.queue(default_concurrency_limit=8)
        return page

    def _chat_column(self, session_id: gr.State, answer_ids: gr.State, cards: gr.State):
        chat = gr.Chatbot(
            elem_id="chat",
            height=560,
            latex_delimiters=[],
            group_consecutive_messages=False,
            buttons=["copy"],
            placeholder="Ask about the clusters, Spark jobs, runbooks and incidents.",
        )
        with gr.Row():
            question = gr.Textbox(
                show_label=False,
                placeholder="현재 클러스터 가동율 알려줘?",
                elem_id="question",
                scale=5,
            )
            send = gr.Button("Ask", variant="primary", elem_id="ask", scale=1)
            fresh = gr.Button("New conversation", elem_id="new-conversation", scale=1)
        with gr.Accordion("Correct an answer", open=False, elem_id="correct"):
            which = gr.Dropdown(label="Answer", elem_id="correct-which")
            correction = gr.Textbox(
                label="The answer it should have been", lines=3, elem_id="correction"
            )
            send_correction = gr.Button("Send correction", elem_id="send-correction")
        self._feedback_status = gr.HTML(elem_id="feedback-status")
        asked = [question, chat, session_id, answer_ids]
        outputs = [chat, question, answer_ids, which]
        for trigger in (send.click, question.submit):
            asking = trigger(self.ask, asked, outputs)
            asking.then(self.refresh, None, cards).then(self.availability, None, self._availability)
        fresh.click(
            lambda: ([], f"console-{uuid.uuid4().hex[:12]}", {}, gr.update(choices=[])),
            None,
            [chat, session_id, answer_ids, which],
        )
        chat.like(self.rate, [answer_ids], self._feedback_status)
        send_correction.click(
            self.correct, [which, correction], [self._feedback_status, correction]
        )
        return chat

    def _proposals(self, cards: gr.State, chat: gr.Chatbot) -> None:
        @gr.render(inputs=cards, triggers=[cards.change])
        def render_cards(shown: list) -> None:
            if not shown:
                gr.HTML("<p>No proposals.</p>")
            for card in shown:
                with gr.Group():
                    gr.HTML(card["html"])
                    if card.get("id") and (card["open"] or card["retryable"]):
                        self._buttons(card, cards, chat)

    def _buttons(self, card: dict, cards: gr.State, chat: gr.Chatbot) -> None:
        action_id, allowed = card["id"], card["can_decide"]
        with gr.Row():
            if card["retryable"]:
                retry = gr.Button("Retry", elem_id=f"retry-{action_id}", interactive=allowed)
                retry.click(self.decision("retry", action_id), [chat], [cards, chat])
                return
            approve = gr.Button(
                "Approve", variant="primary", elem_id=f"approve-{action_id}", interactive=allowed
            )
            why = gr.Textbox(
                show_label=False,
                placeholder="why reject",
                elem_id=f"reject-why-{action_id}",
                interactive=allowed,
            )
            reject = gr.Button("Reject", elem_id=f"reject-{action_id}", interactive=allowed)
            approve.click(self.decision("approve", action_id), [chat, why], [cards, chat])
            reject.click(self.decision("reject", action_id), [chat, why], [cards, chat])
