"""Data-quality suites for a source, run with Great Expectations 1.x.

Four suites per source, each one blocking asset check:
- ``columns_and_types``: required columns exist, the table has rows, and every raw value has
  the shape of its declared type (so a wrong type names its row instead of crashing a cast);
- ``keys``: required columns are not null and the primary key is unique;
- ``values``: ranges, allowed values and orderings (an end after its start);
- ``references``: every foreign value exists in the table it points to.
The raw frame is validated first; the later suites run on the typed frame.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from dagster_platform.ingestion.readers import LOCATION, RawTable
from dagster_platform.ingestion.sources import SourceSpec

TYPE_PATTERNS: dict[str, str] = {
    "int": r"^\s*[-+]?\d+\s*$",
    "float": r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$",
    "timestamp": (
        r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
    ),
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "string_list": r'^\[(?:"(?:[^"\\]|\\.)*"(?:, )?)*\]$',
}

POLARS_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "timestamp": pl.Datetime("us", "UTC"),
    "date": pl.Date(),
    "string_list": pl.List(pl.String()),
}

CHECK_NAMES = ("columns_and_types", "keys", "values", "references")


def check_names(spec: SourceSpec) -> list[str]:
    """The suites that apply to a source: `references` only where it refers to other tables."""
    return [name for name in CHECK_NAMES if name != "references" or spec.references]


# Look up the keys of an upstream table: None when that table does not exist yet.
KeyLookup = Callable[[str, str], set[str] | None]


@dataclass(frozen=True)
class RowFailure:
    location: str
    column: str
    value: str
    rule: str


@dataclass
class CheckOutcome:
    name: str
    description: str
    evaluated: int = 0
    problems: list[str] = field(default_factory=list)  # failures that are not about one row
    rows: list[RowFailure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and not self.rows

    @property
    def failing_locations(self) -> list[str]:
        return sorted({r.location for r in self.rows}, key=_location_order)

    def summary(self) -> str:
        if self.passed:
            return f"{self.name}: {self.evaluated} expectations passed"
        parts = list(self.problems)
        if self.rows:
            shown = self.failing_locations[:10]
            more = len(self.failing_locations) - len(shown)
            parts.append(
                f"{len(self.rows)} failing values in rows: {', '.join(shown)}"
                + (f" and {more} more" if more > 0 else "")
            )
        return f"{self.name}: " + "; ".join(parts)


def _location_order(location: str) -> tuple[str, int]:
    head, _, tail = location.rpartition(" line ")
    return (head, int(tail)) if tail.isdigit() else (location, 0)


# --- Great Expectations -------------------------------------------------------------------


def _gx():
    """Import GX on first use (it takes seconds) with its analytics off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _describe(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("column",))
    return f"{config.type}({args})" if args else config.type


def _table_problem(config: Any, result: dict[str, Any], source: str) -> str:
    """A table-level failure in words: which columns are missing, how many rows there are."""
    if config.type == "expect_table_columns_to_match_set":
        missing = result.get("details", {}).get("mismatched", {}).get("missing", [])
        return f"missing columns {sorted(missing)} in {source}"
    if config.type == "expect_table_row_count_to_be_between":
        return f"{source} has a header but no rows"
    return f"{_describe(config)}: observed {result.get('observed_value')!r}"


def run_expectations(
    frame: pl.DataFrame, expectations: list[Any], outcome: CheckOutcome, source: str = "table"
) -> CheckOutcome:
    """Validate `frame` against GX expectations; record failing rows by their source location."""
    outcome.evaluated += len(expectations)
    if not expectations:
        return outcome
    gx = _gx()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    name = f"{outcome.name}_{uuid.uuid4().hex[:8]}"
    batch_definition = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    pandas_frame = frame.to_pandas(use_pyarrow_extension_array=False)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": pandas_frame})
    result = batch.validate(suite, result_format="COMPLETE")
    locations = frame[LOCATION].to_list() if LOCATION in frame.columns else None
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        column = config.kwargs.get("column") or config.kwargs.get("column_A") or ""
        rule = _describe(config)
        exception = (item.exception_info or {}).get("exception_message")
        indexes = item.result.get("unexpected_index_list")
        if exception:
            outcome.problems.append(f"{rule} on {column or 'table'} could not run: {exception}")
            continue
        if not column:
            outcome.problems.append(_table_problem(config, item.result, source))
            continue
        if not indexes or locations is None:
            outcome.problems.append(f"{rule} on {column}: observed {item.result!r}")
            continue
        values = item.result.get("unexpected_list") or [None] * len(indexes)
        for index, value in zip(indexes, values, strict=False):
            outcome.rows.append(RowFailure(locations[int(index)], column, _short(value), rule))
    return outcome


def _short(value: Any, limit: int = 120) -> str:
    text = "null" if value is None or value != value else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the four suites ----------------------------------------------------------------------


def check_columns_and_types(raw: RawTable) -> CheckOutcome:
    gx = _gx()
    spec = raw.spec
    outcome = CheckOutcome(
        "columns_and_types",
        "Required columns exist, the file has rows, and every value has its declared type.",
    )
    expectations: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=spec.column_names, exact_match=False
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    expectations.extend(
        gx.expectations.ExpectColumnValuesToMatchRegex(
            column=column.name, regex=TYPE_PATTERNS[column.type]
        )
        for column in spec.columns
        if column.type in TYPE_PATTERNS and column.name in raw.frame.columns
    )
    return run_expectations(raw.frame, expectations, outcome, source=raw.path.name)


def to_typed(raw: RawTable) -> pl.DataFrame:
    """Cast the raw strings to the declared types; only call after columns_and_types passed."""
    casts = []
    for column in raw.spec.columns:
        expr = pl.col(column.name).str.strip_chars()
        if column.type == "string":
            casts.append(pl.col(column.name))
        elif column.type == "timestamp":
            casts.append(expr.str.to_datetime(time_unit="us", time_zone="UTC"))
        elif column.type == "date":
            casts.append(expr.str.to_date("%Y-%m-%d"))
        elif column.type == "string_list":
            casts.append(expr.str.json_decode(pl.List(pl.String())))
        else:
            casts.append(expr.cast(POLARS_TYPES[column.type]))
    return raw.frame.select(*casts, pl.col(LOCATION))


def check_keys(spec: SourceSpec, typed: pl.DataFrame) -> CheckOutcome:
    gx = _gx()
    expectations: list[Any] = [
        gx.expectations.ExpectColumnValuesToNotBeNull(column=c.name)
        for c in spec.columns
        if c.required
    ]
    expectations.append(gx.expectations.ExpectColumnValuesToBeUnique(column=spec.primary_key))
    outcome = CheckOutcome(
        "keys", f"Required columns are not null and {spec.primary_key} is unique."
    )
    return run_expectations(_scalars(spec, typed), expectations, outcome)


def check_values(spec: SourceSpec, typed: pl.DataFrame) -> CheckOutcome:
    gx = _gx()
    expectations: list[Any] = []
    for column in spec.columns:
        if column.min is not None or column.max is not None:
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column=column.name, min_value=column.min, max_value=column.max
                )
            )
        if column.allowed is not None:
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInSet(
                    column=column.name, value_set=list(column.allowed)
                )
            )
    for ordering in spec.orderings:
        expectations.append(
            gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=ordering.later,
                column_B=ordering.earlier,
                or_equal=False,
                ignore_row_if="either_value_is_missing",
            )
        )
    outcome = CheckOutcome("values", "Ranges, allowed values and orderings hold on every row.")
    return run_expectations(_scalars(spec, typed), expectations, outcome)


def check_references(spec: SourceSpec, typed: pl.DataFrame, lookup: KeyLookup) -> CheckOutcome:
    gx = _gx()
    outcome = CheckOutcome("references", "Every foreign value exists in the table it refers to.")
    for reference in spec.references:
        keys: set[str] = set()
        for table, key in reference.targets:
            found = lookup(table, key)
            if found is None:
                outcome.problems.append(
                    f"{reference.column} refers to {table}.{key}, but table {table} has not "
                    "been loaded into the warehouse"
                )
            else:
                keys |= found
        values = typed.select(reference.column, LOCATION)
        if spec.column(reference.column).type == "string_list":
            values = values.explode(reference.column)
        run_expectations(
            values.drop_nulls(reference.column),
            [
                gx.expectations.ExpectColumnValuesToBeInSet(
                    column=reference.column, value_set=sorted(keys)
                )
            ],
            outcome,
        )
    return outcome


def _scalars(spec: SourceSpec, typed: pl.DataFrame) -> pl.DataFrame:
    """GX validates pandas frames; list columns are joined to text for the null checks."""
    lists = [c.name for c in spec.columns if c.type == "string_list"]
    return typed.with_columns(pl.col(c).list.join(", ") for c in lists)


@dataclass
class Validation:
    """All suites of one load, and the typed frame when every suite passed."""

    outcomes: list[CheckOutcome]
    typed: pl.DataFrame | None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)


def validate(raw: RawTable, lookup: KeyLookup) -> Validation:
    """Run the suites in order; the typed suites run only once the types are known to cast."""
    schema = check_columns_and_types(raw)
    if not schema.passed:
        return Validation([schema], None)
    typed = to_typed(raw)
    outcomes = [schema, check_keys(raw.spec, typed), check_values(raw.spec, typed)]
    if raw.spec.references:
        outcomes.append(check_references(raw.spec, typed, lookup))
    passed = all(o.passed for o in outcomes)
    return Validation(outcomes, typed.drop(LOCATION) if passed else None)
