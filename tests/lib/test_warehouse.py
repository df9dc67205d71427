"""The warehouse on a real DuckDB file: atomic replacement and waiting out another writer."""

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from dagster_platform.lib import warehouse
from resources import WarehouseResource


class _FailOnCreate:
    """A real DuckDB connection whose table creation fails, to walk the rollback path."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    def execute(self, sql: str, *args):
        if sql.startswith("CREATE OR REPLACE TABLE"):
            raise duckdb.IOException("disk full while writing")
        return self._conn.execute(sql, *args)


def test_replace_is_all_or_nothing(tmp_path: Path) -> None:
    resource = WarehouseResource(database=str(tmp_path / "w.duckdb"))
    assert resource.replace_table("hosts", pl.DataFrame({"host_id": ["a", "b"]})) == 2
    with resource.get_connection() as conn:
        with pytest.raises(duckdb.IOException, match="disk full"):
            warehouse.replace_table(_FailOnCreate(conn), "hosts", pl.DataFrame({"host_id": ["c"]}))
        conn.execute("BEGIN TRANSACTION")  # fails if the failed replace left one open
        conn.execute("ROLLBACK")
    assert resource.read_table("hosts")["host_id"].to_list() == ["a", "b"]


def test_key_values_of_a_missing_table_is_none(tmp_path: Path) -> None:
    resource = WarehouseResource(database=str(tmp_path / "w.duckdb"))
    assert resource.key_values("clusters", "cluster_id") is None


def test_identifiers_are_checked() -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        warehouse.quote("hosts; DROP TABLE x")


def test_a_locked_file_is_retried_until_the_other_writer_leaves(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"conn = duckdb.connect({str(database)!r})\n"
            "print('locked', flush=True)\n"
            "time.sleep(1.5)\n"
            "conn.close()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(duckdb.IOException, match="lock"):
        duckdb.connect(str(database))  # the raw error the resource must absorb
    started = time.monotonic()
    resource = WarehouseResource(database=str(database))
    resource.replace_table("t", pl.DataFrame({"x": [1]}))
    assert time.monotonic() - started >= 0.5
    holder.wait(10)
    assert resource.read_table("t")["x"].to_list() == [1]
