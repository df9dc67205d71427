"""Ontology actions with a person in the loop, against the real broker and a warehouse copy."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
import typer
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from typer.testing import CliRunner

from dagster_platform.cli.actions import actions_app
from dagster_platform.kafka.broker import EmbeddedBroker, free_port
from dagster_platform.kafka.events import ACTIONS_TOPIC, ActionCommandV1
from dagster_platform.kafka.simulator import ClusterSimulator
from dagster_platform.kafka.topics import PLATFORM_TOPICS, ensure_topics
from dagster_platform.ontology.actions import (
    ActionRefused,
    InvalidProposal,
    UnknownAction,
    approve,
    check_parameters,
    execute,
    list_actions,
    parameters_from_text,
    propose,
    reject,
    retry,
    show,
    status_of,
)
from dagster_platform.ontology.loader import LoadedOntology, load_ontology
from dagster_platform.ontology.roles import Roles, RolesError, load_roles
from dagster_platform.ontology.schema import ActionType, Effect, ParameterDef
from dagster_platform.settings import get_settings
from tests.support.state import ONTOLOGY_DIR, ROLES_FILE, SAMPLE_DIR

APP = "application_1794712500000_{}"
FINISHED = APP.format("0180")
TOP_JOB = APP.format("0488")  # the simulator's heaviest etl-prod job
WHY = "etl-prod CPU above 95 % for 20 minutes"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded() -> LoadedOntology:
    return load_ontology(ONTOLOGY_DIR)


@pytest.fixture(scope="module")
def roles() -> Roles:
    return load_roles(ROLES_FILE)


@pytest.fixture(scope="module")
def servers(kafka_broker: EmbeddedBroker) -> str:
    ensure_topics(kafka_broker.bootstrap_servers, PLATFORM_TOPICS)
    return kafka_broker.bootstrap_servers


@pytest.fixture
def conn(sample_warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect(str(sample_warehouse)) as connection:
        yield connection


def _dead_broker() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def _commands(servers: str, action_id: str, quiet: float = 0.7) -> list[ActionCommandV1]:
    """Every command for the action on ops-actions: read from the start until nothing new has
    arrived for `quiet` seconds after the last one found (or since the start)."""
    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": "test-actions", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(ACTIONS_TOPIC, timeout=5).topics[ACTIONS_TOPIC].partitions
    consumer.assign([TopicPartition(ACTIONS_TOPIC, p, OFFSET_BEGINNING) for p in partitions])
    found: list[ActionCommandV1] = []
    last_news, deadline = time.monotonic(), time.monotonic() + 15
    try:
        while time.monotonic() - last_news < quiet and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is None or message.error() is not None:
                continue
            try:
                command = msgspec.json.decode(message.value(), type=ActionCommandV1)
            except msgspec.DecodeError:
                continue  # other tests put junk on the topic on purpose
            if command.action_id == action_id:
                found.append(command)
                last_news = time.monotonic()
    finally:
        consumer.close()
    return found


def _steps(conn: duckdb.DuckDBPyConnection, action_id: str) -> list[tuple[str, str]]:
    return [(row.step, row.actor) for row in show(conn, action_id)]


def _propose(conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, target: str = TOP_JOB) -> str:
    return propose(conn, loaded, "kill_spark_job", target, {"reason": "runaway"}, "bob", WHY)


class FakeYarnResourceManager:
    """A stand-in ResourceManager speaking the Cluster Application State API.

    `PUT /ws/v1/cluster/apps/{id}/state` with `{"state": "KILLED"}` answers 202 with the state
    the application was in (the kill is under way), 200 with KILLED once it is killed, and
    YARN's RemoteException 404 for an unknown application. Requests are recorded.
    """

    def __init__(self, running: Iterable[str] = ()):
        self.states = dict.fromkeys(running, "RUNNING")
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeYarnResourceManager:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        matched = re.fullmatch(r"/ws/v1/cluster/apps/([^/]+)/state", path)
        if matched is None:
            return 404, _remote("NotFoundException", f"no resource {path}")
        app = matched.group(1)
        if app not in self.states:
            return 404, _remote("NotFoundException", f"app with id: {app} not found")
        if body.get("state") != "KILLED":
            return 400, _remote("BadRequestException", "only KILLED is supported")
        if self.states[app] == "KILLED":
            return 200, {"state": "KILLED"}
        before, self.states[app] = self.states[app], "KILLED"
        return 202, {"state": before}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                fake.requests.append(
                    {"path": self.path, "body": body, "type": self.headers["Content-Type"]}
                )
                status, answer = fake._answer(self.path, body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _remote(exception: str, message: str) -> dict[str, Any]:
    return {
        "RemoteException": {
            "exception": exception,
            "message": f"java.lang.Exception: {message}",
            "javaClassName": f"org.apache.hadoop.yarn.webapp.{exception}",
        }
    }


# --- roles -----------------------------------------------------------------------------------


def test_roles_say_who_may_approve(roles: Roles) -> None:
    assert roles.has("alice", "sre") and roles.has("dave", "sre")
    assert not roles.has("bob", "sre") and not roles.has("nobody", "sre")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("roles: [sre\nusers: {}", "not valid YAML"),
        ("roles: {sre: x}\nusers: {alice: [sre, admin]}", r"'alice' has unknown role\(s\) admin"),
        ("roles: {sre: x}\nusers: {alice: sre}", "users.alice"),
        ("- just a list", "must be a mapping"),
    ],
)
def test_a_bad_roles_file_is_named_in_the_error(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "roles.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(RolesError, match=message) as caught:
        load_roles(path)
    assert str(path) in str(caught.value)


# --- proposing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action_type", "target", "parameters", "message"),
    [
        ("kill_spark_job", TOP_JOB, {}, "missing required parameter 'reason'"),
        ("kill_spark_job", TOP_JOB, {"reason": 3}, "expected string"),
        ("kill_spark_job", TOP_JOB, {"reason": "x", "force": True}, "unknown parameter 'force'"),
        ("kill_spark_job", FINISHED, {"reason": "x"}, "state in .* \\(it is 'FINISHED'\\)"),
        ("kill_spark_job", APP.format("9999"), {"reason": "x"}, "does not exist"),
        ("restart_cluster", "etl-prod", {}, "unknown action type 'restart_cluster'"),
    ],
)
def test_an_invalid_proposal_is_refused_and_not_written(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    action_type: str,
    target: str,
    parameters: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(InvalidProposal, match=message):
        propose(conn, loaded, action_type, target, parameters, "bob", WHY)
    assert list_actions(conn) == []


def test_parameters_are_typed_and_checked_against_their_declaration() -> None:
    action = ActionType(
        target="spark_job",
        parameters={
            "mode": ParameterDef(type="string", allowed=("soft", "hard")),
            "grace_s": ParameterDef(type="integer", required=False),
            "queues": ParameterDef(type="string_list", required=False),
        },
        approver_role="sre",
        effect=Effect(kind="ops_command", command="kill_spark_job"),
    )
    texts = {"mode": "hard", "grace_s": "30", "queues": "etl, adhoc"}
    assert check_parameters("t", action, parameters_from_text(action, texts)) == {
        "mode": "hard",
        "grace_s": 30,
        "queues": ["etl", "adhoc"],
    }
    with pytest.raises(InvalidProposal, match="'nuke' is not one of"):
        check_parameters("t", action, {"mode": "nuke"})
    with pytest.raises(InvalidProposal, match="expected integer, got bool"):
        check_parameters("t", action, {"mode": "soft", "grace_s": True})
    with pytest.raises(InvalidProposal, match="'soon' is not a integer"):
        parameters_from_text(action, {"grace_s": "soon"})


# --- approving and executing -----------------------------------------------------------------


def test_an_approved_kill_puts_a_command_on_ops_actions_the_simulator_obeys(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, servers: str
) -> None:
    action_id = _propose(conn, loaded)
    assert status_of(conn, action_id).status == "proposed"

    action = approve(conn, loaded, roles, action_id, "alice", bootstrap_servers=servers)

    assert action.status == "executed", action.detail
    [command] = _commands(servers, action_id)
    assert (command.target_id, command.cluster_id) == (TOP_JOB, "etl-prod")
    assert (command.requested_by, command.approved_by) == ("bob", "alice")
    assert ClusterSimulator(SAMPLE_DIR).apply_action(command)
    trail = show(conn, action_id)
    assert [(r.step, r.actor) for r in trail] == [
        ("proposed", "bob"),
        ("approved", "alice"),
        ("executed", "alice"),
    ]
    assert trail[0].detail == WHY and trail[0].parameters == {"reason": "runaway"}
    assert trail[2].result["command"]["event_id"] == command.event_id
    assert [r.recorded_at for r in trail] == sorted(r.recorded_at for r in trail)
    assert [a.action_id for a in list_actions(conn, "executed")] == [action_id]


def test_nothing_executes_without_an_approval(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles
) -> None:
    action_id = _propose(conn, loaded)
    with pytest.raises(ActionRefused, match="cannot execute: the action is proposed"):
        execute(conn, loaded, roles, action_id, "alice", bootstrap_servers=_dead_broker())
    assert _steps(conn, action_id) == [("proposed", "bob"), ("refused", "alice")]
    assert status_of(conn, action_id).status == "proposed"


@pytest.mark.parametrize("user", ["bob", "carol", "mallory"])
def test_approval_by_the_wrong_role_is_refused_and_audited(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, user: str
) -> None:
    action_id = _propose(conn, loaded)
    with pytest.raises(ActionRefused, match=f"'{user}' does not hold role 'sre'"):
        approve(conn, loaded, roles, action_id, user, bootstrap_servers=_dead_broker())
    trail = show(conn, action_id)
    assert [(r.step, r.actor) for r in trail] == [("proposed", "bob"), ("refused", user)]
    assert "does not hold role" in (trail[1].detail or "")
    assert status_of(conn, action_id).status == "proposed"


def test_approving_twice_executes_once(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, servers: str
) -> None:
    action_id = _propose(conn, loaded)
    assert approve(conn, loaded, roles, action_id, "alice", bootstrap_servers=servers).status == (
        "executed"
    )
    with pytest.raises(ActionRefused, match="already executed"):
        approve(conn, loaded, roles, action_id, "dave", bootstrap_servers=servers)
    assert len(_commands(servers, action_id)) == 1
    assert _steps(conn, action_id) == [
        ("proposed", "bob"),
        ("approved", "alice"),
        ("executed", "alice"),
        ("refused", "dave"),
    ]
    assert status_of(conn, action_id).status == "executed"


def test_racing_approvals_on_two_connections_execute_once(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, servers: str
) -> None:
    action_id = _propose(conn, loaded)
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def approve_as(user: str) -> None:
        cursor = conn.cursor()  # its own transactions, like a second client
        start.wait()
        try:
            outcomes[user] = approve(
                cursor, loaded, roles, action_id, user, bootstrap_servers=servers
            ).status
        except ActionRefused:
            outcomes[user] = "refused"
        finally:
            cursor.close()

    threads = [threading.Thread(target=approve_as, args=(u,)) for u in ("alice", "dave")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes.values()) == ["executed", "refused"]
    assert len(_commands(servers, action_id)) == 1
    steps = [step for step, _ in _steps(conn, action_id)]
    assert steps.count("approved") == 1 and steps.count("executed") == 1


def test_reject_closes_a_proposal(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles
) -> None:
    action_id = _propose(conn, loaded)
    with pytest.raises(ActionRefused, match="'bob' does not hold role 'sre'"):
        reject(conn, loaded, roles, action_id, "bob", "mine, I can close it")
    assert reject(conn, loaded, roles, action_id, "alice", "expected").status == "rejected"
    with pytest.raises(ActionRefused, match="cannot approve: the action is already rejected"):
        approve(conn, loaded, roles, action_id, "alice", bootstrap_servers=_dead_broker())
    with pytest.raises(ActionRefused, match="cannot reject: the action is already rejected"):
        reject(conn, loaded, roles, action_id, "dave", "again")
    assert _steps(conn, action_id) == [
        ("proposed", "bob"),
        ("refused", "bob"),
        ("rejected", "alice"),
        ("refused", "alice"),
        ("refused", "dave"),
    ]
    assert [a.action_id for a in list_actions(conn, "rejected")] == [action_id]


def test_an_unknown_action_id_is_a_clear_error(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles
) -> None:
    missing = "act-000000000000"
    options = {"bootstrap_servers": _dead_broker()}
    for call in (
        lambda: approve(conn, loaded, roles, missing, "alice", **options),
        lambda: retry(conn, loaded, roles, missing, "alice", **options),
        lambda: execute(conn, loaded, roles, missing, "alice", **options),
        lambda: reject(conn, loaded, roles, missing, "alice", "no"),
        lambda: show(conn, missing),
        lambda: status_of(conn, missing),
    ):
        with pytest.raises(UnknownAction, match=f"no action '{missing}'"):
            call()
    assert list_actions(conn) == []


def test_a_job_that_finished_since_the_proposal_is_not_killed(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles
) -> None:
    target = APP.format("0497")
    action_id = _propose(conn, loaded, target)
    conn.execute(  # the job's FINISHED event lands between proposal and approval
        "INSERT INTO spark_job_state (application_id, cluster_id, state, first_seen, "
        "last_event_at, events) VALUES (?, 'etl-prod', 'FINISHED', ?, ?, 1)",
        [target, datetime.now(UTC), datetime.now(UTC)],
    )

    action = approve(conn, loaded, roles, action_id, "alice", bootstrap_servers=_dead_broker())

    assert (action.status, action.retryable) == ("failed", False)
    assert "precondition no longer met" in action.detail and "'FINISHED'" in action.detail
    assert [s for s, _ in _steps(conn, action_id)] == ["proposed", "approved", "failed"]
    with pytest.raises(ActionRefused, match="cannot retry: the action is failed for good"):
        retry(conn, loaded, roles, action_id, "alice", bootstrap_servers=_dead_broker())


def test_a_broker_down_fails_retryably_and_a_retry_executes_once(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, servers: str
) -> None:
    action_id = _propose(conn, loaded)
    started = time.monotonic()
    action = approve(
        conn, loaded, roles, action_id, "alice", bootstrap_servers=_dead_broker(), timeout=2
    )
    assert time.monotonic() - started < 10
    assert (action.status, action.retryable) == ("failed", True)
    assert "command not delivered" in action.detail or "not acknowledged" in action.detail
    assert list_actions(conn, "executed") == []

    with pytest.raises(ActionRefused, match="'bob' does not hold role 'sre'"):
        retry(conn, loaded, roles, action_id, "bob", bootstrap_servers=servers)
    assert retry(conn, loaded, roles, action_id, "dave", bootstrap_servers=servers).status == (
        "executed"
    )
    with pytest.raises(ActionRefused, match="cannot retry: the action is executed"):
        retry(conn, loaded, roles, action_id, "dave", bootstrap_servers=servers)

    [command] = _commands(servers, action_id)
    assert command.approved_by == "alice"
    assert _steps(conn, action_id) == [
        ("proposed", "bob"),
        ("approved", "alice"),
        ("failed", "alice"),
        ("refused", "bob"),
        ("executed", "dave"),
        ("refused", "dave"),
    ]


# --- the YARN ResourceManager ----------------------------------------------------------------


def test_an_approved_kill_asks_the_resource_manager_too(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, servers: str
) -> None:
    action_id = _propose(conn, loaded)
    with FakeYarnResourceManager([TOP_JOB]) as yarn:
        action = approve(
            conn, loaded, roles, action_id, "alice", bootstrap_servers=servers, yarn_url=yarn.url
        )
    assert action.status == "executed", action.detail
    assert yarn.requests == [
        {
            "path": f"/ws/v1/cluster/apps/{TOP_JOB}/state",
            "body": {"state": "KILLED"},
            "type": "application/json",
        }
    ]
    assert yarn.states[TOP_JOB] == "KILLED"
    yarn_result = show(conn, action_id)[-1].result["yarn"]
    assert (yarn_result["http_status"], yarn_result["state"]) == (202, "RUNNING")


def test_a_resource_manager_that_does_not_know_the_app_fails_the_action(
    conn: duckdb.DuckDBPyConnection, loaded: LoadedOntology, roles: Roles, servers: str
) -> None:
    action_id = _propose(conn, loaded)
    with FakeYarnResourceManager() as yarn:
        action = approve(
            conn, loaded, roles, action_id, "alice", bootstrap_servers=servers, yarn_url=yarn.url
        )
    assert (action.status, action.retryable) == ("failed", True)
    assert "HTTP 404" in action.detail and "NotFoundException" in action.detail
    failed = show(conn, action_id)[-1]
    assert "command" in failed.result  # what was done before the failure stays on record


# --- the command line ------------------------------------------------------------------------


def test_the_cli_proposes_approves_and_shows_the_trail(
    sample_warehouse: Path,
    state_dir: Path,
    servers: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    state_dir.mkdir(parents=True)
    shutil.copyfile(sample_warehouse, get_settings().warehouse_path)
    app = typer.Typer()
    app.add_typer(actions_app, name="actions")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["actions", *args])

    proposed = run(
        "propose", "kill_spark_job", TOP_JOB, "--by", "bob", "--why", WHY, "--param", "reason=x"
    )
    assert proposed.exit_code == 0, proposed.output
    action_id = proposed.stdout.strip()

    listed = run("list", "--status", "proposed", "--json")
    assert [a["action_id"] for a in json.loads(listed.stdout)] == [action_id]

    refused = run("approve", action_id, "--by", "carol")
    assert refused.exit_code == 1 and "does not hold role 'sre'" in refused.output

    approved = run("approve", action_id, "--by", "alice")
    assert approved.exit_code == 0, approved.output
    assert f"{action_id} executed" in approved.stdout

    shown = json.loads(run("show", action_id, "--json").stdout)
    assert shown["status"] == "executed"
    assert [r["step"] for r in shown["trail"]] == ["proposed", "refused", "approved", "executed"]
    assert "executed" in run("show", action_id).stdout

    again = run("approve", action_id, "--by", "dave")
    assert again.exit_code == 1 and "already executed" in again.output
    assert run("show", "act-nope").exit_code == 1
    unknown_user = run("reject", action_id, "--by", "mallory", "--why", "x")
    assert unknown_user.exit_code == 1 and "unknown user 'mallory'" in unknown_user.output
    bad_param = run("propose", "kill_spark_job", TOP_JOB, "--by", "bob", "--why", WHY)
    assert bad_param.exit_code == 1 and "missing required parameter" in bad_param.output


def test_a_read_only_connection_lists_the_actions_once_the_log_exists(tmp_path: Path) -> None:
    """The assistant reads the session's proposals over a read-only connection."""
    from dagster_platform.ontology.actions import ensure_action_log, list_actions

    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as conn:
        ensure_action_log(conn)
    with duckdb.connect(str(path), read_only=True) as conn:
        assert list_actions(conn) == []
