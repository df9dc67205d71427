"""Streaming ingestion: Kafka topics landed exactly once, and the rollups that follow them.

A landing consumes from where the warehouse says it stopped, writes rows, dead letters and
offsets in one DuckDB transaction, then commits the offsets to the consumer group that the
sensors watch. The stream sensors land each batch themselves and report the materializations
of its tables, of the rollups refreshed from it and of the dead letters (`land_batch`), so the
steady state costs no run at all; the assets land and refresh in a run when materialized.
"""

import time
from dataclasses import dataclass

import dagster as dg
import duckdb
import polars as pl

from dagster_platform.kafka.events import STREAM_FAMILIES, StreamFamily
from dagster_platform.kafka.landing import LandingReport, land_stream
from dagster_platform.kafka.rollups import ROLLUPS, Rollup, refresh
from dagster_platform.kafka.tables import (
    DEAD_LETTER_TABLE,
    dead_letter_summary,
    ensure_all_tables,
    running_counts,
    unreconciled,
)
from dagster_platform.kafka.topics import KafkaUnavailable
from dagster_platform.kafka.write import ConcurrentLanding, Connect
from dagster_platform.lib import metrics
from dagster_platform.lib.markdown import markdown_table
from resources import WAREHOUSE_POOL, KafkaResource, WarehouseResource

GROUP = "ingestion"
OWNERS = ["team:data-platform"]


def _landing_metadata(report: LandingReport, table: str, total_rows: int | None) -> dict:
    counted = {} if total_rows is None else {"dagster/row_count": dg.MetadataValue.int(total_rows)}
    return {
        **counted,
        "rows_landed": dg.MetadataValue.int(report.landed.get(table, 0)),
        "rows_dead_lettered": dg.MetadataValue.int(report.dead_lettered),
        "messages_consumed": dg.MetadataValue.int(report.consumed),
        "offset_ranges": dg.MetadataValue.json(report.to_dict()["offset_ranges"]),
        "remaining_lag": dg.MetadataValue.int(report.remaining_lag),
        "dead_letter_reasons": dg.MetadataValue.json(report.reasons),
        "kafka_commit": dg.MetadataValue.text(report.kafka_commit_error or "ok"),
        "stopped_early": dg.MetadataValue.text(report.stopped_early or "no"),
    }


@dataclass
class LandedBatch:
    """What one landing did, as Dagster events: a run yields them, the sensor reports them."""

    family: StreamFamily
    metadata: dict[str, dict[str, dg.MetadataValue]]  # asset name -> its materialization's
    problems: list[str] | None  # what `nothing_dropped` found; None: not checked
    report: LandingReport | None = None
    overtaken: str | None = None  # another landing committed this range first

    def check(self) -> dg.AssetCheckResult | None:
        if self.problems is None:
            return None
        return _reconciled(dg.AssetKey(self.family.tables[0].table), self.problems)

    def materializations(self) -> list[dg.AssetMaterialization]:
        return [dg.AssetMaterialization(name, metadata=md) for name, md in self.metadata.items()]

    def describe(self) -> str:
        if self.overtaken:
            return f"{self.family.topic}: skipped, another run landed this range ({self.overtaken})"
        r = self.report
        assert r is not None
        return (
            f"{self.family.topic}: consumed {r.consumed}, landed {r.landed_total}, "
            f"dead-lettered {r.dead_lettered}, lag {r.remaining_lag}"
        )


def land_batch(
    connect: Connect,
    kafka: KafkaResource,
    family: StreamFamily,
    *,
    follow: bool,
    max_messages: int | None = None,
) -> LandedBatch:
    """Land one bounded batch of `family`; with `follow`, refresh the rollups of its tables
    and the dead-letter summary in the same breath (what the sensor reports with the batch).

    Raises `dg.Failure` when the broker does not answer: nothing was written."""
    started = time.perf_counter()
    try:
        report = land_stream(
            connect,
            kafka.servers,
            family,
            max_messages=max_messages or kafka.max_messages_per_run,
            max_message_bytes=kafka.max_message_bytes,
            timeout=kafka.timeout_seconds,
        )
    except KafkaUnavailable as exc:
        raise dg.Failure(description=f"{family.topic}: {exc}; nothing was written.") from exc
    except ConcurrentLanding as exc:  # not a failure: the range is landed, by the other run
        with connect() as conn:
            return LandedBatch(family, {}, unreconciled(conn, family), overtaken=str(exc))
    metrics.record_landing(report, time.perf_counter() - started)  # never raises
    try:
        return _followed(connect, family, report, follow)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        # landed and committed, but another writer took the file before the counts were
        # read: report what the landing itself knows; the next batch brings the rest
        metadata = {t.table: _landing_metadata(report, t.table, None) for t in family.tables}
        return LandedBatch(family, metadata, None, report=report)


def _followed(
    connect: Connect, family: StreamFamily, report: LandingReport, follow: bool
) -> LandedBatch:
    metadata: dict[str, dict[str, dg.MetadataValue]] = {}
    with connect() as conn:
        problems = unreconciled(conn, family)
        for table in family.tables:
            total = conn.execute(f'SELECT count(*) FROM "{table.table}"').fetchone()[0]
            counts = running_counts(conn, table)
            metadata[table.table] = {
                **_landing_metadata(report, table.table, total),
                **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
            }
        if follow and report.landed_total:
            for spec in rollups_of(family):
                metadata[spec.name] = rollup_metadata(conn, spec)
        if follow and report.dead_lettered:
            metadata[DEAD_LETTER_TABLE] = dead_letter_metadata(conn)
    return LandedBatch(family, metadata, problems, report=report)


def rollups_of(family: StreamFamily) -> list[Rollup]:
    tables = {t.table for t in family.tables}
    return [spec for spec in ROLLUPS if spec.source in tables]


def build_landing_asset(family: StreamFamily) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            table.table,
            group_name=GROUP,
            kinds={"kafka", "duckdb"},
            owners=OWNERS,
            description=f"`{table.tag}` events from the `{family.topic}` topic, one row per "
            "message, keyed by (topic, partition, offset).",
            skippable=True,  # a run overtaken by another landing writes nothing and says so
        )
        for table in family.tables
    ]

    @dg.multi_asset(
        name=f"land_{family.name}",
        specs=specs,
        pool=WAREHOUSE_POOL,
        description=f"Lands `{family.topic}` into DuckDB exactly once. The `{family.name}_backlog` "
        "sensor lands new messages itself and reports them here; materializing this asset "
        "lands them in a run (DAGSTER_PLATFORM_STREAM_LANDING=run makes the sensor do that).",
        check_specs=[
            dg.AssetCheckSpec(
                "nothing_dropped",
                asset=specs[0].key,
                description="Per partition, rows landed + dead-lettered = messages consumed, "
                "with no offset stored twice.",
            )
        ],
    )
    def _land(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, kafka: KafkaResource
    ):
        batch = land_batch(warehouse.get_connection, kafka, family, follow=False)
        context.log.info(batch.describe())
        for name, metadata in batch.metadata.items():
            yield dg.MaterializeResult(asset_key=name, metadata=metadata)
        if (check := batch.check()) is not None:
            yield check

    return _land


def _reconciled(key: dg.AssetKey, problems: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name="nothing_dropped",
        passed=not problems,
        metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems))},
    )


landing_assets = [build_landing_asset(family) for family in STREAM_FAMILIES]
LANDED_KEYS = [dg.AssetKey(t.table) for f in STREAM_FAMILIES for t in f.tables]


def dead_letter_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, dg.MetadataValue]:
    ensure_all_tables(conn)
    summary = dead_letter_summary(conn)
    latest = conn.sql(
        f"SELECT kafka_topic, kafka_partition, kafka_offset, reason, error, size_bytes "
        f"FROM {DEAD_LETTER_TABLE} ORDER BY landed_at DESC, kafka_offset DESC LIMIT 10"
    ).pl()
    return {
        "dagster/row_count": dg.MetadataValue.int(sum(n for _, _, n in summary)),
        "by_reason": dg.MetadataValue.md(
            markdown_table(
                pl.DataFrame(summary, schema=["topic", "reason", "messages"], orient="row")
            )
        ),
        "latest": dg.MetadataValue.md(markdown_table(latest)),
    }


@dg.asset(
    name=DEAD_LETTER_TABLE,
    group_name=GROUP,
    kinds={"duckdb"},
    owners=OWNERS,
    deps=LANDED_KEYS,
    pool=WAREHOUSE_POOL,
)
def dead_letter_events(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every message that could not land — not JSON, against its schema, of an unknown type,
    empty or oversized — with the reason, its coordinates and its bytes. The landings write
    it; this asset reports what it holds, and the stream sensors report it with every batch
    that dead-lettered something."""
    with warehouse.get_connection() as conn:
        return dg.MaterializeResult(metadata=dead_letter_metadata(conn))


def rollup_metadata(conn: duckdb.DuckDBPyConnection, spec: Rollup) -> dict[str, dg.MetadataValue]:
    """Refresh `spec` incrementally; what its materialization says."""
    ensure_all_tables(conn)
    counts = refresh(conn, spec)
    preview = conn.sql(f"SELECT * FROM {spec.name} ORDER BY 1 DESC LIMIT 10").pl()
    return {
        "dagster/row_count": dg.MetadataValue.int(counts["rows"]),
        "keys_recomputed": dg.MetadataValue.int(counts["touched"]),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
    }


def build_rollup_asset(spec: Rollup) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        group_name=GROUP,
        kinds={"duckdb"},
        owners=OWNERS,
        deps=[spec.source],
        pool=WAREHOUSE_POOL,
        description=f"Derived from `{spec.source}`, refreshed incrementally: only the "
        "buckets or jobs touched by rows landed since the last refresh are recomputed. The "
        "stream sensor refreshes it with every batch it lands.",
    )
    def _rollup(warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.get_connection() as conn:
            return dg.MaterializeResult(metadata=rollup_metadata(conn, spec))

    return _rollup


rollup_assets = [build_rollup_asset(spec) for spec in ROLLUPS]
