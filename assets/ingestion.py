"""File ingestion: one asset per declared sample source.

Each asset writes, audits, then publishes: the file is read and validated by its Great
Expectations suites before anything is written, and the warehouse table is replaced (in one
transaction) only when every blocking check passes. A bad file therefore fails its checks,
stops everything downstream, and leaves the previous good table untouched.
"""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from dagster_platform.ingestion.readers import SourceError, read_source
from dagster_platform.ingestion.report import failing_records_markdown, failures_markdown
from dagster_platform.ingestion.sources import SOURCES, SourceSpec
from dagster_platform.ingestion.validation import CheckOutcome, check_names, validate
from dagster_platform.lib.markdown import preview_markdown
from resources import WAREHOUSE_POOL, DataFolderResource, WarehouseResource

GROUP = "ingestion"
OWNERS = ["team:data-platform"]


def _column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()]
    )


def _check_result(
    spec: SourceSpec, outcome: CheckOutcome, raw: pl.DataFrame
) -> dg.AssetCheckResult:
    metadata: dict[str, dg.MetadataValue] = {
        "expectations": dg.MetadataValue.int(outcome.evaluated),
        "failing_values": dg.MetadataValue.int(len(outcome.rows)),
    }
    if not outcome.passed:
        metadata["summary"] = dg.MetadataValue.text(outcome.summary())
        metadata["failing_rows"] = dg.MetadataValue.md(failures_markdown(outcome))
        if outcome.rows:
            metadata["failing_records"] = dg.MetadataValue.md(
                failing_records_markdown(raw, outcome)
            )
    return dg.AssetCheckResult(
        asset_key=spec.name,
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=outcome.description,
    )


def build_file_asset(spec: SourceSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        group_name=GROUP,
        description=f"{spec.description}\n\nRead from `{spec.path}` in the data folder, "
        "validated by blocking Great Expectations checks, then published to DuckDB.",
        kinds={"duckdb", "polars", spec.format},
        owners=OWNERS,
        deps=spec.upstream_tables,
        pool=WAREHOUSE_POOL,
        check_specs=[
            dg.AssetCheckSpec(name, asset=spec.name, blocking=True) for name in check_names(spec)
        ],
    )
    def _asset(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        data_folder: DataFolderResource,
    ) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
        try:
            raw = read_source(spec, data_folder.path)
        except SourceError as exc:
            raise dg.Failure(
                description=f"{spec.name}: cannot read the source. {exc}",
                metadata={"file": dg.MetadataValue.path(str(exc.path))},
                allow_retries=False,
            ) from exc
        validation = validate(raw, warehouse.key_values)
        results = [_check_result(spec, o, raw.frame) for o in validation.outcomes]
        if validation.typed is None:
            yield from results
            failed = [o.summary() for o in validation.outcomes if not o.passed]
            raise dg.Failure(
                description=f"{raw.path} failed its data-quality checks; the warehouse table "
                f"{spec.name} was left as it was. " + " | ".join(failed),
                metadata={"file": dg.MetadataValue.path(str(raw.path))},
                allow_retries=False,
            )
        rows = warehouse.replace_table(spec.name, validation.typed)
        context.log.info(f"published {rows} rows from {raw.path.name} to {spec.name}")
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(rows),
                "dagster/column_schema": _column_schema(validation.typed),
                "dagster/table_name": dg.MetadataValue.text(spec.name),
                "source": dg.MetadataValue.path(str(raw.path)),
                "preview": dg.MetadataValue.md(preview_markdown(validation.typed)),
            },
            check_results=results,
        )

    return _asset


file_assets = [build_file_asset(spec) for spec in SOURCES]
