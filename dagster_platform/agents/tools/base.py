"""What every agent's tools share: the declaration, the call contract and the warehouse helpers.

A tool validates its arguments with pydantic and answers with a :class:`ToolResult`, never an
exception, so an agent loop can hand a bad call back to the model to correct. Its function
reports :class:`Findings`; :meth:`Tool.call` adds which tool ran with which arguments, so a
tool's name is written once, in its declaration. `facts` carry the numbers an answer quotes,
and `subjects` the ids in rank order, so that a follow-up ("of these, the top 2") resolves
against what the operator was shown. Reads use short read-only connections. The underscored
helpers are the tools package's own; nothing outside it imports them.
"""

from __future__ import annotations

import difflib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dagster_platform.knowledge.retriever import HybridRetriever
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.warehouse import open_warehouse, table_exists
from dagster_platform.ontology.loader import LoadedOntology, OntologyError, load_ontology
from dagster_platform.settings import Settings

log = get_logger(__name__)


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """A retrieved passage or a data row that grounds the answer."""

    id: str
    source: str  # "runbook", "incident", "warehouse", "ontology"
    text: str
    citation: str | None = None


@dataclass(frozen=True)
class ToolResult:
    tool: str
    arguments: dict[str, Any]
    ok: bool
    summary: str
    facts: list[str]
    rows: list[dict[str, Any]]
    contexts: list[Context]
    subjects: list[str]
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # aggregates an answer's headline uses

    @classmethod
    def failure(cls, tool: str, arguments: dict[str, Any], error: str) -> ToolResult:
        return cls(tool, arguments, False, error.splitlines()[0], [], [], [], [], error)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Findings:
    """What a tool's function found; :meth:`Tool.call` makes it the tool's result."""

    summary: str
    facts: list[str] = field(default_factory=list)
    rows: Sequence[Mapping[str, Any]] = ()
    contexts: list[Context] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class ToolFailure(Exception):
    """A tool cannot answer; the message says why and what would help (the model reads it).
    `facts` and `rows` keep what it learned on the way (each job a kill was refused for);
    `details` what an answer's headline needs (the unknown name and the nearest known ones)."""

    def __init__(
        self,
        message: str,
        facts: Sequence[str] = (),
        rows: Sequence[Mapping[str, Any]] = (),
        details: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.facts = list(facts)
        self.rows = list(rows)
        self.details = dict(details or {})


def nearest(value: str, known: Sequence[str], most: int = 3) -> list[str]:
    """The known names closest in spelling to a name that is not known, closest first."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=most, cutoff=0.5)
    return [by_lower[c] for c in close]


def unknown_name(what: str, value: str, known: Sequence[str], extra: str = "") -> ToolFailure:
    """The failure for a name nothing holds: the known names, the nearest first."""
    close = nearest(value, known)
    hint = f"; nearest: {', '.join(close)}" if close else ""
    return ToolFailure(
        f"unknown {what} {value!r} (known: {_listing(sorted(known))}{extra}){hint}",
        details={"unknown": {"kind": what, "value": value, "nearest": close}},
    )


@dataclass
class ToolContext:
    """What the tools need, opened by the caller; the ontology and the retriever are opened on
    first use and kept for the session."""

    settings: Settings
    actor: str = "assistant"
    retriever_factory: Callable[[], HybridRetriever] | None = None
    _retriever: HybridRetriever | None = field(default=None, init=False, repr=False)
    _ontology: LoadedOntology | None = field(default=None, init=False, repr=False)
    # concurrent first questions must open one vector store, not one each on the same folder
    _opening: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def retriever(self) -> HybridRetriever:
        with self._opening:
            if self._retriever is None:
                if self.retriever_factory is None:
                    raise ToolFailure("the knowledge base is not available to this assistant")
                try:
                    self._retriever = self.retriever_factory()
                except Exception as exc:  # not cached: the next call tries again
                    raise ToolFailure(f"the knowledge base cannot be opened: {exc}") from exc
            return self._retriever

    def ontology(self) -> LoadedOntology:
        with self._opening:
            if self._ontology is None:
                try:
                    self._ontology = load_ontology(self.settings.ontology_dir)
                except OntologyError as exc:
                    raise ToolFailure(f"the ontology is invalid: {exc}") from exc
            return self._ontology


# --- declarations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    run: Callable[[ToolContext, Any], Findings]

    def schema(self) -> dict[str, Any]:
        """The tool as an OpenAI function tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": _without_titles(self.arguments.model_json_schema()),
            },
        }

    def call(self, ctx: ToolContext, raw_arguments: Mapping[str, Any] | str) -> ToolResult:
        """Validate and run; bad arguments and failures come back as `ok=False` with the
        reason. A JSON string is accepted too, as models emit arguments that way."""
        started = time.monotonic()
        if isinstance(raw_arguments, str):
            try:
                raw_arguments = json.loads(raw_arguments or "{}")
            except json.JSONDecodeError as exc:
                return ToolResult.failure(self.name, {}, f"arguments are not JSON: {exc}")
        if not isinstance(raw_arguments, Mapping):
            given = {"arguments": _plain(raw_arguments)}
            return ToolResult.failure(self.name, given, "arguments must be a JSON object")
        given = _plain(dict(raw_arguments))
        try:
            parsed = self.arguments.model_validate(dict(raw_arguments))
        except ValidationError as exc:
            return ToolResult.failure(self.name, given, _invalid(self.arguments, exc))
        arguments = parsed.model_dump(mode="json")
        try:
            found = self.run(ctx, parsed)
        except ToolFailure as exc:
            failed = ToolResult.failure(self.name, arguments, str(exc))
            result = replace(
                failed, facts=exc.facts, rows=_plain(exc.rows), details=_plain(exc.details)
            )
        except duckdb.CatalogException as exc:
            first = str(exc).splitlines()[0]
            reason = f"a table is missing from the warehouse (run the ingestion first): {first}"
            result = ToolResult.failure(self.name, arguments, reason)
        except Exception as exc:  # an agent loop must get an answer, not a traceback
            log.exception("tool failed", extra={"tool": self.name})
            reason = f"{type(exc).__name__}: {exc}"
            result = ToolResult.failure(self.name, arguments, reason)
        else:
            result = ToolResult(
                self.name,
                arguments,
                True,
                found.summary,
                found.facts,
                [_plain(row) for row in found.rows],
                found.contexts,
                found.subjects,
                details=_plain(found.details),
            )
        log.info(
            "tool call",
            extra={
                "tool": self.name,
                "ok": result.ok,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return result


@dataclass(frozen=True)
class Agent:
    """A route the router routes to and the tools its agent may call, in the order shown to
    the model; each agent's module declares its own."""

    route: str
    tools: tuple[Tool, ...]


def _without_titles(schema: Any) -> Any:
    """The JSON schema without pydantic's generated titles, which only cost prompt tokens (a
    property named `title` is a mapping, so it stays)."""
    if isinstance(schema, dict):
        return {
            k: _without_titles(v)
            for k, v in schema.items()
            if not isinstance(v, str) or k != "title"
        }
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def _invalid(model: type[BaseModel], exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":
            expected = ", ".join(model.model_fields) or "none"
            problems.append(f"{where}: unexpected argument (expected: {expected})")
        elif error["type"] == "missing":
            problems.append(f"{where}: required")
        else:
            got = repr(error["input"])
            got = got if len(got) <= 80 else got[:77] + "..."
            problems.append(f"{where}: {error['msg']} (got {got})")
    return "invalid arguments: " + "; ".join(problems)


def _plain(value: Any) -> Any:
    """The value as JSON can carry it: timestamps as ISO strings in UTC, no NaN."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


# --- arguments -------------------------------------------------------------------------------


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


ClusterId = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=100,
        description="Only this cluster (e.g. etl-prod); every cluster when omitted.",
    ),
]


def _text_filter(description: str) -> Any:
    return Field(None, min_length=1, max_length=200, description=description)


# --- warehouse helpers -----------------------------------------------------------------------


@contextmanager
def _reading(ctx: ToolContext) -> Iterator[duckdb.DuckDBPyConnection]:
    path = ctx.settings.warehouse_path
    if not path.is_file():
        raise ToolFailure(f"no warehouse at {path}: run the ingestion first")
    with open_warehouse(path, read_only=True) as conn:
        yield conn


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _capacity(conn: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """Each cluster's vcores, memory and HDFS capacity, to set usage against."""
    if not table_exists(conn, "clusters"):
        return {}
    sql = "SELECT cluster_id, total_vcores, total_memory_gb, hdfs_capacity_tb FROM clusters"
    return {r["cluster_id"]: r for r in _rows(conn.execute(sql))}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _pct(value: float | None) -> str:
    return "?%" if value is None else f"{value:.1f}%"


def _num(value: float) -> str:
    """A quantity as the data writes it, to one decimal and none when whole (2048, 250.8), so
    an answer quotes the same string as the inventory."""
    text = f"{float(value):.1f}"
    return text.removesuffix(".0")


def _listing(values: Sequence[str], most: int = 50) -> str:
    shown = ", ".join(values[:most]) or "none"
    return shown + (f", … ({len(values) - most} more)" if len(values) > most else "")


def _minute(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
