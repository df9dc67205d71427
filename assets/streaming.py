"""Streaming ingestion: Kafka topics landed exactly once, and the rollups that follow them.

A landing run consumes from where the warehouse says it stopped, writes rows, dead letters and
offsets in one DuckDB transaction, then commits the offsets to the consumer group that the
sensors watch. Rollups update on their own (declarative automation) after new rows land.
"""

import time

import dagster as dg
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
from dagster_platform.kafka.write import ConcurrentLanding
from dagster_platform.lib import metrics
from dagster_platform.lib.markdown import markdown_table
from resources import WAREHOUSE_POOL, KafkaResource, WarehouseResource

GROUP = "ingestion"
OWNERS = ["team:data-platform"]


def _landing_metadata(report: LandingReport, table: str, total_rows: int) -> dict:
    return {
        "dagster/row_count": dg.MetadataValue.int(total_rows),
        "rows_landed": dg.MetadataValue.int(report.landed.get(table, 0)),
        "rows_dead_lettered": dg.MetadataValue.int(report.dead_lettered),
        "messages_consumed": dg.MetadataValue.int(report.consumed),
        "offset_ranges": dg.MetadataValue.json(report.to_dict()["offset_ranges"]),
        "remaining_lag": dg.MetadataValue.int(report.remaining_lag),
        "dead_letter_reasons": dg.MetadataValue.json(report.reasons),
        "kafka_commit": dg.MetadataValue.text(report.kafka_commit_error or "ok"),
        "stopped_early": dg.MetadataValue.text(report.stopped_early or "no"),
    }


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
    check_key = specs[0].key

    @dg.multi_asset(
        name=f"land_{family.name}",
        specs=specs,
        pool=WAREHOUSE_POOL,
        description=f"Lands `{family.topic}` into DuckDB exactly once.",
        check_specs=[
            dg.AssetCheckSpec(
                "nothing_dropped",
                asset=check_key,
                description="Per partition, rows landed + dead-lettered = messages consumed, "
                "with no offset stored twice.",
            )
        ],
    )
    def _land(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, kafka: KafkaResource
    ):
        started = time.perf_counter()
        try:
            report = land_stream(
                warehouse.get_connection,
                kafka.servers,
                family,
                max_messages=kafka.max_messages_per_run,
                max_message_bytes=kafka.max_message_bytes,
                timeout=kafka.timeout_seconds,
            )
        except KafkaUnavailable as exc:
            raise dg.Failure(description=f"{family.topic}: {exc}; nothing was written.") from exc
        except ConcurrentLanding as exc:  # not a failure: the range is landed, by the other run
            context.log.info(f"{family.topic}: skipped, another run landed this range ({exc})")
            with warehouse.get_connection() as conn:
                yield _reconciled(check_key, unreconciled(conn, family))
            return
        metrics.record_landing(report, time.perf_counter() - started)  # never raises
        context.log.info(
            f"{family.topic}: consumed {report.consumed}, landed {report.landed_total}, "
            f"dead-lettered {report.dead_lettered}, lag {report.remaining_lag}"
        )
        with warehouse.get_connection() as conn:
            problems = unreconciled(conn, family)
            totals = {
                t.table: conn.execute(f'SELECT count(*) FROM "{t.table}"').fetchone()[0]
                for t in family.tables
            }
            counts = {t.table: running_counts(conn, t) for t in family.tables}
        for table in family.tables:
            yield dg.MaterializeResult(
                asset_key=table.table,
                metadata={
                    **_landing_metadata(report, table.table, totals[table.table]),
                    **{k: dg.MetadataValue.int(v) for k, v in counts[table.table].items()},
                },
            )
        yield _reconciled(check_key, problems)

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


@dg.asset(
    name=DEAD_LETTER_TABLE,
    group_name=GROUP,
    kinds={"duckdb"},
    owners=OWNERS,
    deps=LANDED_KEYS,
    pool=WAREHOUSE_POOL,
    automation_condition=dg.AutomationCondition.eager(),
)
def dead_letter_events(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every message that could not land — not JSON, against its schema, of an unknown type,
    empty or oversized — with the reason, its coordinates and its bytes. The landing runs
    write it; this asset reports what it holds."""
    with warehouse.get_connection() as conn:
        ensure_all_tables(conn)
        summary = dead_letter_summary(conn)
        latest = conn.sql(
            f"SELECT kafka_topic, kafka_partition, kafka_offset, reason, error, size_bytes "
            f"FROM {DEAD_LETTER_TABLE} ORDER BY landed_at DESC, kafka_offset DESC LIMIT 10"
        ).pl()
    total = sum(n for _, _, n in summary)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(total),
            "by_reason": dg.MetadataValue.md(
                markdown_table(
                    pl.DataFrame(summary, schema=["topic", "reason", "messages"], orient="row")
                )
            ),
            "latest": dg.MetadataValue.md(markdown_table(latest)),
        }
    )


def build_rollup_asset(spec: Rollup) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        group_name=GROUP,
        kinds={"duckdb"},
        owners=OWNERS,
        deps=[spec.source],
        pool=WAREHOUSE_POOL,
        automation_condition=dg.AutomationCondition.eager(),
        description=f"Derived from `{spec.source}`, refreshed incrementally: only the "
        "buckets or jobs touched by rows landed since the last refresh are recomputed.",
    )
    def _rollup(warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.get_connection() as conn:
            ensure_all_tables(conn)
            counts = refresh(conn, spec)
            preview = conn.sql(f"SELECT * FROM {spec.name} ORDER BY 1 DESC LIMIT 10").pl()
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(counts["rows"]),
                "keys_recomputed": dg.MetadataValue.int(counts["touched"]),
                "preview": dg.MetadataValue.md(markdown_table(preview)),
            }
        )

    return _rollup


rollup_assets = [build_rollup_asset(spec) for spec in ROLLUPS]
