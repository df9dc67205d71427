"""The ops assistant: route the question, run the chosen agent's bounded tool loop, write a
grounded answer, and log the interaction.

An answer is built from evidence, not from the model's memory. Its first paragraph, the
headline, answers the question in the question's language: composed from the tools' facts
(`headline.py`), or the model's own sentence when it passes the gate (`headline_gate.py`);
the interaction records which was shown and why the other was refused. The facts and passages
the tools returned follow it. When the LLM is down, the router and planner fall back to their
rules and the composed headline stands; the interaction row says what failed. Text found in
documents is quoted as data; nothing in it can trigger a tool.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagster_platform.agents import interactions
from dagster_platform.agents.classifier import RouteClassifier, load_routes
from dagster_platform.agents.entities import Entities, EntityLinker
from dagster_platform.agents.headline import (
    compose_headline,
    evidence_lines,
    headline_prompt,
    language_of,
)
from dagster_platform.agents.headline_gate import Verdict, judge, key_facts
from dagster_platform.agents.interactions import Interaction
from dagster_platform.agents.planner import (
    LLMPlanner,
    PlannerKind,
    RulePlanner,
    SessionAction,
    ToolCall,
    Turn,
)
from dagster_platform.agents.router import RouteDecision, Router
from dagster_platform.agents.tools import AGENT_TOOLS, TOOLS, ToolContext, ToolResult
from dagster_platform.agents.tools.data import PROPOSE_KILL, approve_command
from dagster_platform.lib.logs import get_logger, mask_text
from dagster_platform.lib.warehouse import open_warehouse, table_exists
from dagster_platform.llm.base import GenerationConfig, LLMError
from dagster_platform.llm.service import LLMConfig, LLMService, get_service
from dagster_platform.ontology.actions import ACTION_LOG, list_actions
from dagster_platform.ontology.objects import read_object
from dagster_platform.settings import Settings

if TYPE_CHECKING:
    from dagster_platform.knowledge.base import LazyKnowledge

log = get_logger(__name__)

MAX_QUESTION_CHARS = 2000
PASSAGE_CHARS = 1200  # a whole chunk: the command an operator needs may sit at its end


class QuestionRejected(ValueError):
    """The question cannot be answered as asked (empty, too long); it is logged as rejected."""

    def __init__(self, message: str, interaction_id: str):
        super().__init__(message)
        self.interaction_id = interaction_id


@dataclass(frozen=True)
class AssistantConfig:
    planner: PlannerKind = "rules"
    max_steps: int = 4
    # a headline is a sentence or two: 32 tokens bound the model's time on 2 cores (~12 tokens/s
    # for the packaged 135M model); a longer or cut one fails the gate and the composed stands
    headline_tokens: int = 32
    router_min_confidence: float = 0.9
    actor: str = "assistant"


@dataclass
class Answer:
    interaction: Interaction
    text: str
    route: RouteDecision
    results: list[ToolResult] = field(default_factory=list)

    @property
    def interaction_id(self) -> str:
        return self.interaction.interaction_id

    def to_dict(self) -> dict[str, Any]:
        return {**self.interaction.to_dict(), "route_detail": self.route.to_dict()}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def compose(headline: str, results: list[ToolResult], proposed: list[str], notes: list[str]) -> str:
    """The answer: the headline, then the facts, the cited passages, what could not be had,
    the proposals awaiting approval, and notes."""
    parts: list[str] = [headline]
    facts = [fact for r in results if r.ok for fact in r.facts]
    if facts:
        parts.append("\n".join(f"- {fact}" for fact in facts))
    passages = [
        c for r in results if r.ok for c in r.contexts if c.source in ("runbook", "incident")
    ]
    for number, context in enumerate(passages, start=1):
        text = context.text[:PASSAGE_CHARS].strip()
        parts.append(
            f"[{number}] {context.citation or context.id}\n> " + text.replace("\n", "\n> ")
        )
    failures = [f"- {r.tool}: {r.error}" for r in results if not r.ok]
    if failures:
        parts.append("Could not get:\n" + "\n".join(failures))
    if proposed:
        parts.append(
            "Awaiting approval (nothing runs until a person with the required role approves): "
            + ", ".join(proposed)
            + f". Approve with `{approve_command()}`."
        )
    parts += notes
    return "\n\n".join(parts)


class Assistant:
    """One per process (or per benchmark); `ask` is the whole question-to-answer path."""

    def __init__(
        self,
        settings: Settings,
        tools: ToolContext,
        router: Router,
        llm: LLMService | None,
        config: AssistantConfig | None = None,
        llm_error: str | None = None,
        knowledge: LazyKnowledge | None = None,
    ):
        self.settings = settings
        self._knowledge = knowledge
        self.tools = tools
        self.router = router
        self.llm = llm
        self.config = config or AssistantConfig()
        self.llm_error = llm_error

    @classmethod
    def open(
        cls,
        settings: Settings,
        config: AssistantConfig | None = None,
        llm_config: LLMConfig | None = None,
        use_llm: bool = True,
        llm: LLMService | None = None,
    ) -> Assistant:
        """Wire the assistant from the settings: the packaged embedder for the classifier and the
        retriever, the knowledge base, and the LLM service (its model loads on first use).
        `llm` replaces the service of the settings (an evaluation pins an adapter this way)."""
        from dagster_platform.knowledge.base import LazyKnowledge
        from dagster_platform.knowledge.embeddings import Embedder, EmbeddingModelError

        config = config or AssistantConfig()
        try:
            embedder = Embedder.from_name(settings.embedding_model, settings.models_dir)
            embed = embedder.encode
        except EmbeddingModelError as exc:
            log.warning("routing without embeddings", extra={"error": str(exc)})
            embedder, embed = None, None
        routes = load_routes()
        classifier = RouteClassifier(routes, embed)
        llm_error = None
        if use_llm and llm is None:
            try:
                llm = get_service(llm_config or LLMConfig.from_settings(settings))
            except LLMError as exc:
                llm_error = str(exc)
        knowledge = LazyKnowledge(settings, embedder)
        tools = ToolContext(settings, actor=config.actor, retriever_factory=knowledge)
        router = Router(
            routes, classifier, None if llm is None else llm.client, config.router_min_confidence
        )
        return cls(settings, tools, router, llm, config, llm_error, knowledge)

    def close(self) -> None:
        """Close the vector store the retriever opened (chroma keeps a system per path)."""
        if self._knowledge is not None:
            self._knowledge.close()

    # --- the path of one question --------------------------------------------------------------

    def ask(self, question: str, session_id: str | None = None) -> Answer:
        started = time.perf_counter()
        session_id = session_id or _new_id("session")
        record = Interaction(_new_id("ia"), session_id, question, status="answered")
        problem = _problem_with(question)
        if problem:
            record.status, record.error = "rejected", problem
            record.latency_ms = (time.perf_counter() - started) * 1000
            self._save(record)
            raise QuestionRejected(problem, record.interaction_id)
        question = question.strip()
        llm_errors: list[str] = [self.llm_error] if self.llm_error else []
        if self.llm is not None:
            served = self.llm.refresh()
            record.model, record.backend = served.model, served.backend
            if served.adapter is not None:
                record.adapter, record.adapter_version = served.adapter.name, served.adapter.version
            if self.llm.warning:
                llm_errors.append(self.llm.warning)

        turn = self._turn(question, session_id)
        decision = names_spark_work(turn.entities, self.router.route(question), question)
        if decision.source != "llm" and decision.reason.startswith("LLM unavailable"):
            llm_errors.append(decision.reason)
        record.route, record.route_source = decision.route, decision.source
        record.route_detail = decision.to_dict()
        turn.route = decision.route
        results = self._run_tools(turn, record)

        composed = compose_headline(question, turn.entities, results, turn.decided_actions())
        headline, notes = self._headline(question, composed, results, record, llm_errors)
        proposed = [
            row["action_id"]
            for r in results
            if r.tool == PROPOSE_KILL.name
            for row in r.rows
            if row.get("action_id") and row.get("status") in ("proposed", "already_proposed")
        ]
        record.answer = compose(headline, results, proposed, notes)
        record.contexts = [
            {"id": c.id, "source": c.source, "citation": c.citation, "text": c.text}
            for r in results
            for c in r.contexts
        ]
        record.subjects = next((r.subjects for r in reversed(results) if r.subjects), [])
        record.proposed_actions = proposed
        if llm_errors:
            record.llm_error = "; ".join(llm_errors)
            record.status = "degraded"
        record.latency_ms = (time.perf_counter() - started) * 1000
        self._save(record)
        log.info(
            "answered",
            extra={
                "interaction_id": record.interaction_id,
                "session_id": session_id,
                "route": decision.route,
                "tools": [c["tool"] for c in record.tool_calls],
                "latency_ms": round(record.latency_ms, 1),
                "question": mask_text(question),
            },
        )
        return Answer(record, record.answer, decision, results)

    def _turn(self, question: str, session_id: str) -> Turn:
        linker = EntityLinker.from_warehouse(self.settings)
        history: list[list[str]] = []
        actions: list[SessionAction] = []
        if self.settings.warehouse_path.exists():
            with open_warehouse(self.settings.warehouse_path, read_only=True) as conn:
                earlier = interactions.read(conn, session_id=session_id, limit=20)
                history = [i.subjects for i in earlier if i.subjects]
                proposed = {a for i in earlier for a in i.proposed_actions}
                if proposed and table_exists(conn, ACTION_LOG):
                    actions = self._session_actions(conn, proposed)
        return Turn(
            "",
            question,
            linker.link(question),
            history=history,
            session_id=session_id,
            known_clusters=frozenset(linker.clusters),
            actions=actions,
        )

    def _session_actions(self, conn: Any, proposed: set[str]) -> list[SessionAction]:
        """The session's proposals as they stand now, newest change first, each with the
        cluster of its target ("did it drop?" is about that cluster)."""
        loaded = self.tools.ontology()
        found = []
        for action in list_actions(conn):
            if action.action_id in proposed:
                target = read_object(conn, loaded, action.target_type, action.target_key) or {}
                found.append(
                    SessionAction(
                        action.action_id,
                        action.target_key,
                        action.status,
                        action.updated_at,
                        target.get("cluster_id"),
                    )
                )
        return found

    def _planner(self) -> RulePlanner | LLMPlanner:
        if self.config.planner == "llm" and self.llm is not None:
            return LLMPlanner(self.llm.client)
        return RulePlanner()

    def _run_tools(self, turn: Turn, record: Interaction) -> list[ToolResult]:
        """The bounded loop: at most `max_steps` calls, each validated against its schema."""
        planner = self._planner()
        allowed = AGENT_TOOLS[turn.route]
        for _ in range(self.config.max_steps):
            call: ToolCall | None = planner.next_call(turn)
            if call is None:
                break
            if call.tool not in allowed:
                result = ToolResult.failure(
                    call.tool,
                    call.arguments,
                    f"{call.tool} is not a tool of the {turn.route} agent",
                )
            else:
                result = TOOLS[call.tool].call(self.tools, call.arguments)
            turn.results.append(result)
            record.tool_calls.append(
                {
                    "tool": call.tool,
                    "arguments": result.arguments or call.arguments,
                    "ok": result.ok,
                    "error": result.error,
                    "planned_by": call.planned_by,
                    "note": call.note,
                }
            )
        return turn.results

    def _headline(
        self,
        question: str,
        composed: str,
        results: list[ToolResult],
        record: Interaction,
        llm_errors: list[str],
    ) -> tuple[str, list[str]]:
        """The composed headline, or the model's when the gate passes it; recorded either way."""
        evidence = evidence_lines(results)
        record.language = language_of(question)
        record.evidence = evidence
        record.headline, record.headline_source = composed, "composed"
        ok = [r for r in results if r.ok and (r.facts or r.contexts)]
        if self.llm is None or not ok:
            return composed, []
        try:
            completion = self.llm.client.chat(
                headline_prompt(question, evidence),
                GenerationConfig(max_new_tokens=self.config.headline_tokens, stop=("\n",)),
            )
        except LLMError as exc:
            llm_errors.append(f"headline not generated: {exc}")
            return composed, [
                "(The language model is unavailable: the headline is composed from the facts.)"
            ]
        record.model_headline = completion.text.strip()
        support = "\n".join(
            [
                composed,
                *(f for r in ok for f in r.facts),
                *(c.text for r in ok for c in r.contexts),
            ]
        )
        verdict: Verdict = judge(
            record.model_headline, question, record.language, support, key_facts(composed)
        )
        if not verdict.ok:
            record.headline_refused = verdict.reason
            return composed, []
        record.headline, record.headline_source = record.model_headline, "model"
        return record.model_headline, []

    def _save(self, record: Interaction) -> None:
        with open_warehouse(self.settings.warehouse_path) as conn:
            interactions.record(conn, record)


QUEUE_WORD = re.compile(r"\bqueues?\b|큐", re.IGNORECASE)


def names_spark_work(
    entities: Entities, decision: RouteDecision, question: str = ""
) -> RouteDecision:
    """A question that names a Spark application, job, queue or user (and no host) is about
    Spark work: the data agent takes it unless the router's evidence was decisive. Queues are
    YARN's, so an infra answer to a question about them is too."""
    spark = entities.applications or entities.job_names or entities.queues or entities.users
    if decision.route == "infra" and not entities.hosts and QUEUE_WORD.search(question):
        return _to_data(decision, "asks about YARN queues")
    if decision.route == "data" or not spark or entities.hosts or decision.classification.decisive:
        return decision
    named = (entities.applications + entities.job_names + entities.queues + entities.users)[0]
    return _to_data(decision, f"names Spark work ({named})")


def _to_data(decision: RouteDecision, why: str) -> RouteDecision:
    """The decision handed to the data agent, saying why and what the router said."""
    return RouteDecision(
        "data",
        "entities",
        decision.classification,
        decision.llm_label,
        decision.llm_probabilities,
        reason=f"{why}; the router said {decision.route}",
    )


def _problem_with(question: str) -> str | None:
    if not question or not question.strip():
        return "the question is empty"
    if len(question) > MAX_QUESTION_CHARS:
        return (
            f"the question is {len(question)} characters long; the limit is "
            f"{MAX_QUESTION_CHARS} (ask about one thing at a time)"
        )
    return None
