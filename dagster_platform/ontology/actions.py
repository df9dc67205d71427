"""Ontology actions with a person in the loop: propose, approve or reject, execute, audit.

Every step is one row of the append-only `action_log` table, never updated or deleted, so
the log is the audit trail and the status is derived from it: an action's status is its
latest step other than `refused` (a refused attempt — wrong role, second approval — leaves
the action as it was). The effect runs only after an `approved` row by a holder of the
action type's approver role, and the `claim` column (unique) allows one decision and one
`executed` row per action, even when two approvals race on separate connections.

Preconditions are read live from the target's backing data when the action is proposed and
again right before the effect runs: an approval can come minutes later, after the job
finished on its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, NoReturn, get_args

import duckdb

from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import table_exists
from dagster_platform.ontology.effects import EFFECT_TIMEOUT_S, EffectFailed, run_effect
from dagster_platform.ontology.loader import LoadedOntology
from dagster_platform.ontology.objects import read_object
from dagster_platform.ontology.roles import Roles
from dagster_platform.ontology.schema import ActionType, ParameterDef

log = get_logger(__name__)

ACTION_LOG = "action_log"
ACTION_STATUS = "action_status"
Step = Literal["proposed", "approved", "rejected", "executed", "failed", "refused"]
STEPS: tuple[str, ...] = get_args(Step)
STATUSES: tuple[str, ...] = tuple(s for s in STEPS if s != "refused")

_COLUMNS = (
    "sequence, action_id, step, action_type, target_type, target_key, parameters, actor, "
    "detail, result, retryable, recorded_at"
)
_STEP_LIST = ", ".join(f"'{s}'" for s in STEPS)
_DDL = (
    "CREATE SEQUENCE IF NOT EXISTS action_log_sequence START 1",
    f"CREATE TABLE IF NOT EXISTS {ACTION_LOG} ("
    "sequence BIGINT PRIMARY KEY DEFAULT nextval('action_log_sequence'), "
    "action_id VARCHAR NOT NULL, "
    f"step VARCHAR NOT NULL CHECK (step IN ({_STEP_LIST})), "
    "action_type VARCHAR NOT NULL, target_type VARCHAR NOT NULL, target_key VARCHAR NOT NULL, "
    "parameters JSON NOT NULL, actor VARCHAR NOT NULL, detail VARCHAR, result JSON, "
    "retryable BOOLEAN, recorded_at TIMESTAMPTZ NOT NULL, claim VARCHAR UNIQUE)",
    f"CREATE VIEW IF NOT EXISTS {ACTION_STATUS} AS "
    "WITH latest AS (SELECT * FROM action_log WHERE step <> 'refused' "
    "QUALIFY row_number() OVER (PARTITION BY action_id ORDER BY sequence DESC) = 1), "
    "proposal AS (SELECT action_id, actor AS proposed_by, recorded_at AS proposed_at, "
    "detail AS why FROM action_log WHERE step = 'proposed') "
    "SELECT l.action_id, l.action_type, l.target_type, l.target_key, l.parameters, "
    "l.step AS status, p.proposed_by, p.proposed_at, p.why, l.actor AS last_actor, "
    "l.recorded_at AS updated_at, l.detail, l.retryable "
    "FROM latest l JOIN proposal p USING (action_id)",
)


StepListener = Callable[["ActionStatus"], None]
_listeners: list[StepListener] = []


class ActionError(ValueError):
    """An action request that cannot be carried out; the message says why."""


class UnknownAction(ActionError):
    """No action with this id was ever proposed."""


class InvalidProposal(ActionError):
    """The proposal was not written: unknown type, bad parameters, target absent or unfit."""


class ActionRefused(ActionError):
    """A step was refused (and audited): wrong role, or the action is past that step."""


@dataclass(frozen=True)
class Subject:
    """What every row of one action repeats: the action and its target, as proposed."""

    action_id: str
    action_type: str
    target_type: str
    target_key: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class LogRow:
    """One audit row of `action_log`."""

    sequence: int
    action_id: str
    step: str
    action_type: str
    target_type: str
    target_key: str
    parameters: dict[str, Any]
    actor: str
    detail: str | None
    result: dict[str, Any] | None
    retryable: bool | None
    recorded_at: datetime

    @property
    def subject(self) -> Subject:
        return Subject(
            self.action_id, self.action_type, self.target_type, self.target_key, self.parameters
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recorded_at": self.recorded_at.isoformat()}


@dataclass(frozen=True)
class ActionStatus:
    """An action as it stands now: one row of the `action_status` view."""

    action_id: str
    action_type: str
    target_type: str
    target_key: str
    parameters: dict[str, Any]
    status: str
    proposed_by: str
    proposed_at: datetime
    why: str
    last_actor: str
    updated_at: datetime
    detail: str | None
    retryable: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "proposed_at": self.proposed_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def ensure_action_log(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the log and its status view where they are missing; where they exist nothing is
    executed, so a read-only connection can list and show actions."""
    if table_exists(conn, ACTION_LOG) and table_exists(conn, ACTION_STATUS):
        return
    for statement in _DDL:
        conn.execute(statement)


@contextmanager
def _transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    conn.begin()
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()  # a write conflict raises here, already rolled back


# --- announcing proposals and outcomes ------------------------------------------------------


def add_listener(listener: StepListener) -> Callable[[], None]:
    """Call `listener` with the action as it stands after each proposal, execution (done or
    failed) and rejection, wherever it happens (CLI, API, console); returns its remover. A
    listener must not block (a webhook notifier queues); one that raises is logged, never
    raised to the person deciding."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def _announced(status: ActionStatus) -> ActionStatus:
    for listener in list(_listeners):
        try:
            listener(status)
        except Exception as exc:
            log.error(
                "action listener failed",
                extra={"action_id": status.action_id, "step": status.status, "error": str(exc)},
            )
    return status


# --- parameters and preconditions ------------------------------------------------------------


def _typed(spec: ParameterDef, value: Any) -> Any:
    """The value as JSON stores it, if it has the declared type; TypeError/ValueError if not."""
    kind = spec.type
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "timestamp" and isinstance(value, datetime | str):
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no time zone")
        return parsed.isoformat()
    if kind == "date" and isinstance(value, date | str) and not isinstance(value, datetime):
        return (value if isinstance(value, date) else date.fromisoformat(value)).isoformat()
    if (
        kind == "string_list"
        and isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value)
    ):
        return list(value)
    raise TypeError(f"expected {kind}, got {type(value).__name__} {value!r}")


def check_parameters(
    action_type: str, action: ActionType, given: Mapping[str, Any]
) -> dict[str, Any]:
    """The parameters, typed; raise InvalidProposal listing every unknown, missing, mistyped
    or disallowed one."""
    problems = [
        f"unknown parameter {name!r} (declared: {', '.join(action.parameters) or 'none'})"
        for name in sorted(set(given) - set(action.parameters))
    ]
    clean: dict[str, Any] = {}
    for name, spec in action.parameters.items():
        value = given.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if spec.required:
                problems.append(f"missing required parameter {name!r}")
            continue
        try:
            value = _typed(spec, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"parameter {name!r}: {exc}")
            continue
        if spec.allowed is not None and value not in spec.allowed:
            problems.append(f"parameter {name!r}: {value!r} is not one of {list(spec.allowed)}")
            continue
        clean[name] = value
    if problems:
        raise InvalidProposal(f"invalid parameters for {action_type}: {'; '.join(problems)}")
    return clean


def parameters_from_text(action: ActionType, texts: Mapping[str, str]) -> dict[str, Any]:
    """Typed parameters from command-line text (`k=v`), by the declared types; unknown names
    stay text so that :func:`check_parameters` reports them."""
    values: dict[str, Any] = {}
    for name, text in texts.items():
        kind = action.parameters[name].type if name in action.parameters else "string"
        try:
            if kind == "integer":
                values[name] = int(text)
            elif kind == "float":
                values[name] = float(text)
            elif kind == "boolean":
                values[name] = {"true": True, "false": False}[text.strip().lower()]
            elif kind == "string_list":
                values[name] = [part.strip() for part in text.split(",") if part.strip()]
            else:
                values[name] = text
        except (KeyError, ValueError):
            raise InvalidProposal(f"parameter {name!r}: {text!r} is not a {kind}") from None
    return values


def unmet_preconditions(action: ActionType, target: Mapping[str, Any]) -> list[str]:
    return [
        f"{c.describe()} (it is {target.get(c.property)!r})"
        for c in action.preconditions
        if not c.holds(target.get(c.property))
    ]


def _action_type(loaded: LoadedOntology, name: str) -> ActionType:
    action = loaded.ontology.action_types.get(name)
    if action is None:
        known = ", ".join(loaded.ontology.action_types) or "none"
        raise InvalidProposal(f"unknown action type {name!r} (declared: {known})")
    return action


# --- reading the log -------------------------------------------------------------------------


def _log_row(row: tuple[Any, ...]) -> LogRow:
    values = list(row)
    values[6] = json.loads(values[6])
    values[9] = json.loads(values[9]) if values[9] is not None else None
    return LogRow(*values)


def show(conn: duckdb.DuckDBPyConnection, action_id: str) -> list[LogRow]:
    """The whole audit trail of one action, oldest first."""
    ensure_action_log(conn)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM {ACTION_LOG} WHERE action_id = ? ORDER BY sequence",
        [action_id],
    ).fetchall()
    if not rows:
        raise UnknownAction(f"no action {action_id!r}")
    return [_log_row(row) for row in rows]


def list_actions(conn: duckdb.DuckDBPyConnection, status: str | None = None) -> list[ActionStatus]:
    """Actions as they stand, most recently changed first; only those in `status` if given."""
    if status is not None and status not in STATUSES:
        raise ActionError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    ensure_action_log(conn)
    rows = conn.execute(
        f"SELECT * FROM {ACTION_STATUS} WHERE $status IS NULL OR status = $status "
        "ORDER BY updated_at DESC, action_id",
        {"status": status},
    ).fetchall()
    return [_status_row(row) for row in rows]


def status_of(conn: duckdb.DuckDBPyConnection, action_id: str) -> ActionStatus:
    ensure_action_log(conn)
    row = conn.execute(f"SELECT * FROM {ACTION_STATUS} WHERE action_id = ?", [action_id]).fetchone()
    if row is None:
        raise UnknownAction(f"no action {action_id!r}")
    return _status_row(row)


def _status_row(row: tuple[Any, ...]) -> ActionStatus:
    values = list(row)
    values[4] = json.loads(values[4])
    return ActionStatus(*values)


def _latest(conn: duckdb.DuckDBPyConnection, action_id: str) -> LogRow:
    """The step that sets the status (refused rows never do)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM {ACTION_LOG} WHERE action_id = ? AND step <> 'refused' "
        "ORDER BY sequence DESC LIMIT 1",
        [action_id],
    ).fetchone()
    if row is None:
        raise UnknownAction(f"no action {action_id!r}")
    return _log_row(row)


def _step_row(conn: duckdb.DuckDBPyConnection, action_id: str, step: str) -> LogRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM {ACTION_LOG} WHERE action_id = ? AND step = ? "
        "ORDER BY sequence LIMIT 1",
        [action_id, step],
    ).fetchone()
    return _log_row(row) if row else None


# --- writing the log -------------------------------------------------------------------------


def _write(
    conn: duckdb.DuckDBPyConnection,
    subject: Subject,
    step: Step,
    actor: str,
    *,
    detail: str | None = None,
    result: Mapping[str, Any] | None = None,
    retryable: bool | None = None,
    claim: str | None = None,
) -> None:
    conn.execute(
        f"INSERT INTO {ACTION_LOG} (action_id, step, action_type, target_type, target_key, "
        "parameters, actor, detail, result, retryable, recorded_at, claim) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            subject.action_id,
            step,
            subject.action_type,
            subject.target_type,
            subject.target_key,
            json.dumps(subject.parameters, sort_keys=True),
            actor,
            detail,
            json.dumps(dict(result), sort_keys=True, default=str) if result is not None else None,
            retryable,
            datetime.now(UTC),
            claim,
        ],
    )


def _logged(subject: Subject, step: Step, actor: str, detail: str | None) -> None:
    log.info(
        "action step",
        extra={"action_id": subject.action_id, "step": step, "actor": actor, "detail": detail},
    )


def _insert(
    conn: duckdb.DuckDBPyConnection,
    subject: Subject,
    step: Step,
    actor: str,
    *,
    detail: str | None = None,
    result: Mapping[str, Any] | None = None,
    retryable: bool | None = None,
    claim: str | None = None,
) -> None:
    _write(
        conn, subject, step, actor, detail=detail, result=result, retryable=retryable, claim=claim
    )
    _logged(subject, step, actor, detail)


def _refuse(conn: duckdb.DuckDBPyConnection, subject: Subject, user: str, why: str) -> NoReturn:
    _insert(conn, subject, "refused", user, detail=why)
    raise ActionRefused(f"{subject.action_id}: {why}")


def _require_role(
    conn: duckdb.DuckDBPyConnection, action: ActionType, subject: Subject, roles: Roles, user: str
) -> None:
    if not roles.has(user, action.approver_role):
        _refuse(
            conn,
            subject,
            user,
            f"{user!r} does not hold role {action.approver_role!r}, "
            f"which {subject.action_type} needs",
        )


def _decide(
    conn: duckdb.DuckDBPyConnection, subject: Subject, step: Step, user: str, detail: str | None
) -> None:
    """Write the approval or rejection if the action is still only proposed, checking and
    writing in one transaction; a refusal (audited) otherwise, also when another decision was
    committed in between (the unique claim makes that commit fail)."""
    written = False
    try:
        with _transaction(conn):
            current = _latest(conn, subject.action_id).step
            if current == "proposed":
                claim = f"{subject.action_id}:decision"
                _write(conn, subject, step, user, detail=detail, claim=claim)
                written = True
    except (duckdb.ConstraintException, duckdb.TransactionException):
        written = False
        current = _latest(conn, subject.action_id).step
    if not written:
        verb = "approve" if step == "approved" else "reject"
        _refuse(conn, subject, user, f"cannot {verb}: the action is already {current}")
    _logged(subject, step, user, detail)


def _failed_for_good(
    conn: duckdb.DuckDBPyConnection, subject: Subject, user: str, unmet: list[str]
) -> ActionStatus:
    detail = f"precondition no longer met: {'; '.join(unmet)}"
    _insert(conn, subject, "failed", user, detail=detail, retryable=False)
    return _announced(status_of(conn, subject.action_id))


# --- the steps -------------------------------------------------------------------------------


def propose(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    action_type: str,
    target_key: str,
    parameters: Mapping[str, Any],
    proposed_by: str,
    why: str,
) -> str:
    """Write a proposal and return its action id; nothing is written when it is invalid."""
    action = _action_type(loaded, action_type)
    if not proposed_by.strip():
        raise InvalidProposal("say who proposes the action")
    if not why.strip():
        raise InvalidProposal("say why the action is proposed")
    clean = check_parameters(action_type, action, parameters)
    target = read_object(conn, loaded, action.target, target_key)
    if target is None:
        raise InvalidProposal(f"{action.target} {target_key!r} does not exist")
    unmet = unmet_preconditions(action, target)
    if unmet:
        raise InvalidProposal(
            f"cannot propose {action_type} on {action.target} {target_key}: "
            f"precondition not met: {'; '.join(unmet)}"
        )
    ensure_action_log(conn)
    subject = Subject(f"act-{uuid.uuid4().hex[:12]}", action_type, action.target, target_key, clean)
    claim = f"{subject.action_id}:proposed"
    _insert(conn, subject, "proposed", proposed_by, detail=why, claim=claim)
    _announced(status_of(conn, subject.action_id))
    return subject.action_id


def approve(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    roles: Roles,
    action_id: str,
    user: str,
    *,
    bootstrap_servers: str,
    yarn_url: str | None = None,
    timeout: float = EFFECT_TIMEOUT_S,
) -> ActionStatus:
    """Approve as `user` (who must hold the approver role) and execute at once.

    Returns the status after execution: `executed`, or `failed` with the reason. Raises
    ActionRefused (after auditing it) for the wrong role or an action already decided.
    """
    subject = show(conn, action_id)[0].subject
    _require_role(conn, _action_type(loaded, subject.action_type), subject, roles, user)
    _decide(conn, subject, "approved", user, None)
    return execute(
        conn,
        loaded,
        roles,
        action_id,
        user,
        bootstrap_servers=bootstrap_servers,
        yarn_url=yarn_url,
        timeout=timeout,
    )


def retry(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    roles: Roles,
    action_id: str,
    user: str,
    *,
    bootstrap_servers: str,
    yarn_url: str | None = None,
    timeout: float = EFFECT_TIMEOUT_S,
) -> ActionStatus:
    """Run the effect of an approved action again after a retryable failure."""
    subject = show(conn, action_id)[0].subject
    _require_role(conn, _action_type(loaded, subject.action_type), subject, roles, user)
    current = _latest(conn, action_id)
    if current.step != "failed" or not current.retryable:
        state = "failed for good" if current.step == "failed" else current.step
        _refuse(conn, subject, user, f"cannot retry: the action is {state}")
    return execute(
        conn,
        loaded,
        roles,
        action_id,
        user,
        bootstrap_servers=bootstrap_servers,
        yarn_url=yarn_url,
        timeout=timeout,
    )


def execute(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    roles: Roles,
    action_id: str,
    user: str,
    *,
    bootstrap_servers: str,
    yarn_url: str | None = None,
    timeout: float = EFFECT_TIMEOUT_S,
) -> ActionStatus:
    """Run the effect of an approved action (or one whose last attempt failed retryably).

    The only path to an effect. It needs an `approved` row by a holder of the approver role,
    re-reads the target live (a precondition no longer met is a failure for good), and
    records `executed` only with what the outside systems acknowledged; an effect error is a
    retryable failure.
    """
    proposal = show(conn, action_id)[0]
    subject = proposal.subject
    action = _action_type(loaded, subject.action_type)
    current = _latest(conn, action_id)
    if not (current.step == "approved" or (current.step == "failed" and current.retryable)):
        _refuse(conn, subject, user, f"cannot execute: the action is {current.step}")
    approval = _step_row(conn, action_id, "approved")
    if approval is None or not roles.has(approval.actor, action.approver_role):
        by = f" by {approval.actor!r}" if approval else ""
        _refuse(
            conn,
            subject,
            user,
            f"cannot execute: no approval{by} from a holder of role {action.approver_role!r}",
        )
    target = read_object(conn, loaded, action.target, subject.target_key)
    if target is None:
        return _failed_for_good(
            conn, subject, user, [f"{action.target} {subject.target_key!r} no longer exists"]
        )
    unmet = unmet_preconditions(action, target)
    if unmet:
        return _failed_for_good(conn, subject, user, unmet)
    try:
        result = run_effect(
            action.effect,
            action_id=action_id,
            target_key=subject.target_key,
            target=target,
            requested_by=proposal.actor,
            approved_by=approval.actor,
            bootstrap_servers=bootstrap_servers,
            yarn_url=yarn_url,
            timeout=timeout,
        )
    except EffectFailed as exc:
        _insert(conn, subject, "failed", user, detail=str(exc), result=exc.done, retryable=True)
        return _announced(status_of(conn, action_id))
    command = result["command"]
    summary = f"command on {command['topic']}[{command['partition']}] at {command['offset']}"
    if "yarn" in result:
        summary += f"; ResourceManager answered HTTP {result['yarn']['http_status']}"
    claim = f"{action_id}:executed"
    _insert(conn, subject, "executed", user, detail=summary, result=result, claim=claim)
    return _announced(status_of(conn, action_id))


def reject(
    conn: duckdb.DuckDBPyConnection,
    loaded: LoadedOntology,
    roles: Roles,
    action_id: str,
    user: str,
    why: str,
) -> ActionStatus:
    """Close a proposal without running it. Rejecting is deciding: `user` must hold the
    approver role, and a refusal (that role missing, or the action decided already) is
    audited."""
    subject = show(conn, action_id)[0].subject
    if not why.strip():
        raise ActionError("say why the action is rejected")
    _require_role(conn, _action_type(loaded, subject.action_type), subject, roles, user)
    _decide(conn, subject, "rejected", user, why)
    return _announced(status_of(conn, action_id))
