"""The DuckDB warehouse, built on dagster-duckdb's resource.

Connections are short-lived (one per operation) and dagster-duckdb retries opening them while
another process holds the file lock; assets that write share the `warehouse` pool (limit 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from dagster_platform.lib import warehouse
from dagster_platform.settings import get_settings

WAREHOUSE_POOL = "warehouse"


class WarehouseResource(dg.ConfigurableResource):
    """DuckDB file in the state folder unless `database` names another."""

    database: str | None = Field(
        default=None, description="DuckDB file; default: warehouse.duckdb in the state folder."
    )

    @property
    def path(self) -> str:
        return self.database or str(get_settings().warehouse_path)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with DuckDBResource(database=self.path).get_connection() as conn:
            yield conn

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        with self.get_connection() as conn:
            return warehouse.replace_table(conn, table, frame)

    def key_values(self, table: str, column: str) -> set[str] | None:
        with self.get_connection() as conn:
            return warehouse.key_values(conn, table, column)

    def read_table(self, table: str) -> pl.DataFrame:
        with self.get_connection() as conn:
            return warehouse.read_table(conn, table)
