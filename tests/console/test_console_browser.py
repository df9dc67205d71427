"""The ops console in a real browser (Debian's Chromium through Playwright) over the real API
app, the real assistant without the LLM (the words do not matter here), a frozen sample state
and the session's Kafka broker.

Every step keeps a screenshot under `.state/test-artifacts/console/<test>/` (printed by each
test). The frozen state has no simulator, so "the jobs stop" is shown the way the platform
records it: the executed kill in the action log with the command it put on `ops-actions`, and
the job's state as the tools read it (still RUNNING in the frozen warehouse: nothing obeys).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import duckdb
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi import FastAPI

from dagster_platform.agents.assistant import Assistant
from dagster_platform.agents.incident_report import build_report, read_alert
from dagster_platform.api.app import Services, create_app
from dagster_platform.console import notify
from dagster_platform.console.auth import SESSION_COOKIE, Sessions, SignInThrottle
from dagster_platform.console.reads import reports_dir
from dagster_platform.console.routes import WRONG, mount_console
from dagster_platform.finetune import promotion
from dagster_platform.finetune.artifacts import save_evaluation
from dagster_platform.finetune.evaluation import EvaluationReport
from dagster_platform.finetune.gate import CandidateMetrics
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import (
    ACTIONS_TOPIC,
    ALERT_EVENTS,
    FEEDBACK_EVENTS,
    AlertV1,
    encode,
)
from dagster_platform.kafka.landing import land_stream
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.settings import Settings
from tests.console.conftest import HTML_RUNBOOK, IMAGE, PASSWORDS, SCRIPT
from tests.console.test_notify import Webhook
from tests.support.api import KEYS, no_llm
from tests.support.browser import Screenshots, serving
from tests.support.events import produce
from tests.support.scenario import SEED

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.models, pytest.mark.kafka]

ANSWER_TIMEOUT_MS = 60_000
ALERTS_TOPIC = ALERT_EVENTS.topic


@contextmanager
def console(settings: Settings, factory=no_llm, **options) -> Iterator[str]:
    app = create_app(
        settings, assistant_factory=factory, api_keys=KEYS, publish_timeout_s=2, **options
    )
    with serving(app) as base:
        yield base


def sign_in(browser, base: str, user: str, password: str | None = None):
    page = browser.new_context().new_page()
    page.goto(f"{base}/ui/")
    page.wait_for_selector("#username")
    page.fill("#username", user)
    page.fill("#password", password or PASSWORDS[user])
    page.click("#sign-in")
    page.wait_for_selector("#signed-in-user", timeout=30_000)
    return page


def answers(page) -> int:
    return page.locator("#chat .served-by").count()


def ask(page, question: str) -> None:
    before = answers(page)
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    page.wait_for_function(
        "n => document.querySelectorAll('#chat .served-by').length > n",
        arg=before,
        timeout=ANSWER_TIMEOUT_MS,
    )


def action_log(settings: Settings, action_id: str) -> list[tuple[str, str, str | None]]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return conn.execute(
            "SELECT step, actor, detail FROM action_log WHERE action_id = ? ORDER BY sequence",
            [action_id],
        ).fetchall()


def proposed_ids(settings: Settings) -> list[str]:
    with open_warehouse(settings.warehouse_path, read_only=True) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT action_id FROM action_log WHERE step = 'proposed' ORDER BY sequence"
            ).fetchall()
        ]


def test_the_seed_scenario_approved_rated_and_corrected(
    browser, console_settings: Settings, request: pytest.FixtureRequest
) -> None:
    shots = Screenshots(request.node.name)
    webhook = Webhook(["500", "500"])
    settings = console_settings.model_copy(update={"webhook_url": webhook.url})
    try:
        with console(settings) as base:
            alice = sign_in(browser, base, "alice")
            shots.take(alice, "signed-in")
            for number, question in enumerate(SEED[:4], start=1):
                ask(alice, question)
                shots.take(alice, f"question-{number}")
            chat = alice.locator("#chat").inner_text()
            assert "etl-prod" in chat and "application_" in chat
            assert "no LLM: composed from the tools' facts" in chat
            assert alice.locator("#chat details.passages").count() >= 1  # cited, folded
            assert "rb-" in alice.locator("#chat details.passages").first.inner_text()

            first, second = proposed_ids(settings)
            assert alice.locator("#chat .proposal-card").count() == 2
            card = alice.locator(f"#card-{first}").inner_text()
            assert "kill_spark_job" in card and "proposed by" in card and "precondition" in card

            bob = sign_in(browser, base, "bob")
            bob.wait_for_selector(f"#card-{first}")
            assert bob.locator(f"#approve-{first}").is_disabled()
            assert "bob does not hold the role 'sre'" in bob.locator(f"#card-{first}").inner_text()
            shots.take(bob, "bob-read-only")
            # the page holds no authority: pressing the disabled button anyway is refused there
            bob.evaluate(f"document.getElementById('approve-{first}').removeAttribute('disabled')")
            bob.locator(f"#approve-{first}").click()
            bob.wait_for_selector("#chat .refused", timeout=30_000)
            assert "does not hold role 'sre'" in bob.locator("#chat .refused").inner_text()
            shots.take(bob, "bob-refused")
            assert [s for s, _, _ in action_log(settings, first)] == ["proposed", "refused"]

            for action_id in (first, second):
                alice.locator(f"#approve-{action_id}").click()
                alice.wait_for_selector(f"#card-{action_id}.status-executed", timeout=30_000)
            shots.take(alice, "approved")
            assert alice.locator("#chat .outcome-message").count() == 2
            executed = action_log(settings, first)
            assert [s for s, _, _ in executed] == ["proposed", "refused", "approved", "executed"]
            assert executed[1][1] == "bob" and executed[2][1] == "alice"
            card = alice.locator(f"#card-{first}").inner_text()
            assert "ops-actions" in card and "state now: RUNNING" in card

            ask(alice, SEED[4])
            shots.take(alice, "question-5")

            alice.get_by_role("button", name="Like", exact=True).first.click()
            alice.wait_for_selector("#feedback-status:has-text('Queued')")
            rated = alice.locator("#feedback-status").inner_text()
            assert "usable ratings since the last dataset" in rated
            alice.locator("#correct").click()
            alice.locator("#correct-which input").click()
            alice.get_by_role("option").nth(1).click()
            alice.locator("#correction textarea").fill("Top three by CPU share, with queues.")
            alice.locator("#send-correction").click()
            alice.wait_for_selector("#feedback-status:has-text('correction')")
            shots.take(alice, "rated-and-corrected")
        received = webhook.wait_for(4, timeout=30)
    finally:
        notify.uninstall(webhook.url)
        webhook.close()

    texts = [body["text"].split(":")[0] for body in received]
    assert texts.count("New proposal awaiting approval") == 2 and texts.count("Executed") == 2
    assert webhook.answered[:2] == ["500", "500"]  # retried until taken

    land_stream(
        lambda: open_warehouse(settings.warehouse_path),
        settings.bootstrap_servers,
        FEEDBACK_EVENTS,
        timeout=5,
    )
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        landed = conn.execute(
            "SELECT f.rating, f.correction, f.user_id, i.question FROM feedback_events f "
            "JOIN interactions i USING (interaction_id) ORDER BY f.kafka_offset"
        ).fetchall()
    assert (1, None, "alice", SEED[0]) in landed
    assert (-1, "Top three by CPU share, with queues.", "alice", SEED[1]) in landed

    commands = _commands(settings.bootstrap_servers)
    killed = {c["target_id"] for c in commands if c["action_id"] in (first, second)}
    assert len(killed) == 2  # the simulator would obey these


def _commands(servers: str) -> list[dict]:
    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": f"console-{free_port()}", "log_level": 0}
    )
    consumer.assign([TopicPartition(ACTIONS_TOPIC, 0, OFFSET_BEGINNING)])
    found = []
    while (message := consumer.poll(3)) is not None:
        if not message.error():
            found.append(json.loads(message.value()))
    consumer.close()
    return found


def test_markup_in_a_question_or_a_document_shows_as_text_and_never_runs(
    browser, console_settings: Settings, request: pytest.FixtureRequest
) -> None:
    shots = Screenshots(request.node.name)
    with console(console_settings) as base:
        page = sign_in(browser, base, "carol")
        ask(page, f"{SCRIPT} {IMAGE} 현재 클러스터 가동율 알려줘?")
        ask(page, "How do I restart the zorblax widget? runbook")
        passage = page.locator("#chat details.passages", has_text=HTML_RUNBOOK).last
        passage.click()
        passage.scroll_into_view_if_needed()
        shots.take(page, "markup-as-text")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        asked = page.locator("#chat").inner_text()
        assert SCRIPT in asked and IMAGE in asked  # the question, literally
        quoted = passage.text_content()  # the document that carries them, cited
        assert SCRIPT in quoted and IMAGE in quoted and HTML_RUNBOOK in quoted
        assert page.locator("#chat img[src=x]").count() == 0
        assert page.locator("#chat script").count() == 0


def test_a_proposal_approved_from_two_tabs_runs_once(
    browser, console_settings: Settings, request: pytest.FixtureRequest
) -> None:
    shots = Screenshots(request.node.name)
    with console(console_settings) as base:
        first = sign_in(browser, base, "alice")
        ask(first, SEED[1])
        ask(first, SEED[3])
        action_id = proposed_ids(console_settings)[0]
        second = first.context.new_page()
        second.goto(f"{base}/ui/")
        second.wait_for_selector(f"#approve-{action_id}")
        first.locator(f"#approve-{action_id}").click()
        second.locator(f"#approve-{action_id}").click()
        for tab in (first, second):
            tab.wait_for_selector(f"#card-{action_id}.status-executed", timeout=30_000)
        shots.take(first, "first-tab")
        shots.take(second, "second-tab")
    steps = [s for s, _, _ in action_log(console_settings, action_id)]
    assert steps.count("executed") == 1 and steps.count("approved") == 1
    assert steps.count("refused") == 1
    outcomes = first.locator("#chat").inner_text() + second.locator("#chat").inner_text()
    assert "cannot approve: the action is already" in outcomes


def test_with_the_broker_and_the_llm_down_the_page_says_so_and_keeps_working(
    browser, console_settings: Settings, request: pytest.FixtureRequest
) -> None:
    shots = Screenshots(request.node.name)
    down = console_settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"}
    )

    def llm_down(settings: Settings) -> Assistant:
        assistant = no_llm(settings)
        assistant.llm_error = "the vLLM server at http://127.0.0.1:9/v1 did not answer"
        return assistant

    with console(down, factory=llm_down) as base:
        page = sign_in(browser, base, "alice")
        assert "Kafka at" in page.locator("#availability").inner_text()
        ask(page, SEED[1])
        assert "LLM unavailable" in page.locator("#chat").inner_text()
        page.locator("#recheck").click()
        page.wait_for_selector("#availability:has-text('LLM unavailable')")
        ask(page, SEED[3])
        action_id = proposed_ids(down)[0]
        page.get_by_role("button", name="Like", exact=True).first.click()
        page.wait_for_selector("#feedback-status:has-text('Not queued')", timeout=30_000)
        page.locator(f"#approve-{action_id}").click()
        page.wait_for_selector(f"#retry-{action_id}", timeout=60_000)
        shots.take(page, "broker-and-llm-down")
        assert "failed" in page.locator(f"#card-{action_id}").inner_text()
    assert [s for s, _, _ in action_log(down, action_id)][-1] == "failed"


def test_signing_in_wrong_forged_or_expired(
    browser, console_settings: Settings, request: pytest.FixtureRequest
) -> None:
    """A wrong password names neither part, failures are throttled, and a forged or expired
    session cookie only ever reaches the sign-in page."""
    shots = Screenshots(request.node.name)
    app = FastAPI()
    services = Services(console_settings, no_llm, publish_timeout_s=1)
    sessions = mount_console(
        app, services, sessions=Sessions(lifetime_s=4), throttle=SignInThrottle("3/minute")
    )
    with serving(app) as base:
        carol = sign_in(browser, base, "carol")  # before the failures throttle this address
        signed_in = time.monotonic()
        [cookie] = [c for c in carol.context.cookies() if c["name"] == SESSION_COOKIE]
        assert sessions.user_of(cookie["value"]) == "carol" and cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"

        page = browser.new_context().new_page()
        for user, password in [("alice", "wrong-password"), ("nobody", PASSWORDS["alice"])]:
            page.goto(f"{base}/ui/")
            page.fill("#username", user)
            page.fill("#password", password)
            page.click("#sign-in")
            assert page.inner_text("#sign-in-error") == WRONG
        shots.take(page, "wrong-password")
        page.fill("#username", "alice")
        page.fill("#password", "third-guess")
        page.click("#sign-in")
        page.fill("#username", "alice")
        page.fill("#password", PASSWORDS["alice"])
        page.click("#sign-in")
        assert "Too many failed sign-ins" in page.inner_text("#sign-in-error")
        shots.take(page, "throttled")

        forged = browser.new_context()
        forged.add_cookies(
            [{"name": SESSION_COOKIE, "value": "alice.ZZZZ.forged", "url": f"{base}/ui/"}]
        )
        tab = forged.new_page()
        tab.goto(f"{base}/ui/")
        assert tab.url.endswith("/ui/login") and tab.locator("#sign-in").count() == 1
        assert tab.request.get(f"{base}/ui/config").status == 401

        time.sleep(max(0.0, signed_in + 4.5 - time.monotonic()))  # past the session's lifetime
        carol.reload()
        carol.wait_for_selector("#sign-in")
        shots.take(carol, "expired")
        assert sessions.user_of(cookie["value"]) is None
        assert carol.request.get(f"{base}/ui/config").status == 401


def test_incidents_and_the_loop(
    browser,
    console_settings: Settings,
    kafka_broker: EmbeddedBroker,
    request: pytest.FixtureRequest,
) -> None:
    shots = Screenshots(request.node.name)
    alert = AlertV1(
        event_id=uuid.uuid4().hex,
        ts=datetime.now(UTC),
        alert_id=f"alert-console-{uuid.uuid4().hex[:6]}",
        cluster_id="etl-prod",
        host_id="etl-prod-worker-02",
        severity="sev2",
        rule="host_cpu_high",
        metric="cpu_pct",
        value=97.5,
        threshold=90.0,
        message=f"CPU above 90% {IMAGE}",
    )
    produce(kafka_broker, ALERTS_TOPIC, [encode(alert)])
    land_stream(
        lambda: open_warehouse(console_settings.warehouse_path),
        console_settings.bootstrap_servers,
        ALERT_EVENTS,
        timeout=5,
    )
    assistant = no_llm(console_settings)
    try:
        report = build_report(assistant.tools, read_alert(assistant.tools, alert.alert_id))
    finally:
        assistant.close()
    folder = reports_dir(console_settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{alert.alert_id}.md").write_text(report.markdown, encoding="utf-8")
    _a_promotion_and_its_evaluation(console_settings)

    with console(console_settings) as base:
        page = sign_in(browser, base, "carol")
        page.get_by_role("tab", name="Incidents").click()
        page.wait_for_selector(f"#incidents :text('{alert.alert_id}')", timeout=30_000)
        page.wait_for_selector("#incident-report :text('Suspects')", timeout=30_000)
        shots.take(page, "incidents")
        incidents = page.locator("#incidents").inner_text()
        assert IMAGE in incidents and report.proposed_actions
        assert f"{report.proposed_actions[0]} (proposed)" in incidents
        assert "Suspects" in page.locator("#incident-report").inner_text()
        page.get_by_role("tab", name="The loop").click()
        page.wait_for_selector("#promotions :text('promoted')", timeout=60_000)
        page.wait_for_selector("#evaluation-chart img", timeout=30_000)
        shots.take(page, "loop")
        assert "Champion:" in page.locator("#loop-champion").inner_text()
        assert "eval_loss 2% better than the champion" in page.locator("#promotions").inner_text()
        assert "eval_loss" in page.locator("#evaluation").inner_text()
        assert page.evaluate("typeof window.__pwned") == "undefined"


def _a_promotion_and_its_evaluation(settings: Settings) -> None:
    with open_warehouse(settings.warehouse_path) as conn:
        promotion.ensure_table(conn)
        conn.execute(
            f"INSERT INTO {promotion.TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ["pr-1", datetime.now(UTC), "ops-assistant", "promoted", "2", "1", "2",
             json.dumps(["eval_loss 2% better than the champion"]), "{}", "dagster:run", None],
        )  # fmt: skip
    report = EvaluationReport(
        [
            CandidateMetrics("challenger", "2", {"eval_loss": 1.10, "rouge_l": 0.31}),
            CandidateMetrics("champion", "1", {"eval_loss": 1.25, "rouge_l": 0.30}),
        ],
        loss_examples=40,
        dropped_examples=0,
        generated_examples=8,
        max_new_tokens=64,
        agent_cases=5,
    )
    save_evaluation(settings.state_dir, "2", report)
