"""The warehouse on a real DuckDB file: atomic replacement, waiting out another writer, and
the one connection per file that this process's threads share."""

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


# --- one connection per file, shared by this process's threads -------------------------------

PAUSE_S = 0.3  # long enough for a thread that is not blocked to get in

Then = Callable[[duckdb.DuckDBPyConnection], object] | None  # what a holder does once inside


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    return path


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each connection DuckDB opens, as `ro`/`rw`, in order (threads append to it too)."""
    modes: list[str] = []
    connect = duckdb.connect

    def counting(path: str, read_only: bool = False, **kwargs):
        conn = connect(path, read_only=read_only, **kwargs)
        modes.append("ro" if read_only else "rw")
        return conn

    monkeypatch.setattr(warehouse.duckdb, "connect", counting)
    return modes


def other_process_can_write(path: Path) -> bool:
    """Whether a separate process gets DuckDB's write lock on the file now."""
    probe = subprocess.run(
        [sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).close()"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0 or "lock" in probe.stderr.lower(), probe.stderr
    return probe.returncode == 0


class Holder:
    """A thread inside `open_warehouse` until told to leave; `inside` is set once it got in."""

    def __init__(self, path: Path, read_only: bool, then: Then = None):
        self.inside, self.leave = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(path, read_only, then))
        self.thread.start()

    def _run(self, path: Path, read_only: bool, then: Then) -> None:
        try:
            with warehouse.open_warehouse(path, read_only=read_only) as conn:
                conn.execute("SELECT count(*) FROM t").fetchall()
                if then is not None:
                    then(conn)
                self.inside.set()
                assert self.leave.wait(30)
        except BaseException as exc:
            self.error = exc
            self.inside.set()

    def done(self) -> None:
        self.leave.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@contextmanager
def holding(path: Path, read_only: bool, then: Then = None) -> Iterator[Holder]:
    holder = Holder(path, read_only, then)
    try:
        yield holder
    finally:
        holder.done()


def test_concurrent_readers_share_one_connection(database: Path, opened: list[str]) -> None:
    with holding(database, True) as first, holding(database, True) as second:
        assert first.inside.wait(10) and second.inside.wait(10)  # both in at once
        with warehouse.open_warehouse(database, read_only=True) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert opened == ["ro"]


def test_a_writer_waits_for_the_readers_then_writes(database: Path, opened: list[str]) -> None:
    with holding(database, True) as reader:
        assert reader.inside.wait(10)
        writer = Holder(database, False, lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        assert not writer.inside.wait(PAUSE_S)  # a read-only connection cannot take the write
    assert writer.inside.wait(10)
    writer.done()
    with warehouse.open_warehouse(database, read_only=True) as conn:
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    assert opened == ["ro", "rw", "ro"]  # reopened read-write for the writer, closed between


def test_a_read_write_connection_serves_readers_and_writers_take_turns(database: Path) -> None:
    with holding(database, False) as first:
        assert first.inside.wait(10)
        with holding(database, True) as reader:
            assert reader.inside.wait(10)  # served by the writer's connection at once
        second = Holder(database, False)
        assert not second.inside.wait(PAUSE_S)
    assert second.inside.wait(10)
    second.done()


def test_a_waiting_writer_is_not_starved_by_new_readers(database: Path, opened: list[str]) -> None:
    with holding(database, True) as reader:
        assert reader.inside.wait(10)
        writer = Holder(database, False, lambda _: opened.append("writer in"))
        assert not writer.inside.wait(PAUSE_S)
        late = Holder(database, True, lambda _: opened.append("late reader in"))
        assert not late.inside.wait(PAUSE_S)  # queued behind the writer, not beside the reader
    assert writer.inside.wait(10) and late.inside.wait(10)
    writer.done()
    late.done()
    assert opened[:2] == ["ro", "rw"]  # the late reader got in on the writer's connection
    assert set(opened[2:]) == {"writer in", "late reader in"}


def test_the_last_user_to_leave_releases_the_file(database: Path) -> None:
    with holding(database, False) as first:
        assert first.inside.wait(10)
        with warehouse.open_warehouse(database, read_only=True) as conn:
            conn.execute("SELECT 1").fetchall()
        assert not other_process_can_write(database)  # one user is still in
    assert other_process_can_write(database)


def test_an_error_in_the_block_still_releases_it(database: Path) -> None:
    with pytest.raises(ValueError, match="inside"), warehouse.open_warehouse(database) as conn:
        conn.execute("INSERT INTO t VALUES (3)")
        raise ValueError("failed inside the block")
    assert other_process_can_write(database)
    with warehouse.open_warehouse(database, read_only=True) as conn:  # no turn was left held
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_a_thread_cannot_write_inside_its_own_read_only_block(database: Path) -> None:
    with warehouse.open_warehouse(database, read_only=True) as outer:
        with (
            pytest.raises(warehouse.WarehouseUpgradeError, match="open the outer block read-write"),
            warehouse.open_warehouse(database),
        ):
            pass
        with warehouse.open_warehouse(database, read_only=True) as inner:  # reads nest
            assert inner.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert outer.execute("SELECT x FROM t").fetchall() == [(1,)]
    with warehouse.open_warehouse(database) as conn:  # writes nest, reads nest inside them
        with (
            warehouse.open_warehouse(database) as again,
            warehouse.open_warehouse(database, read_only=True) as reading,
        ):
            again.execute("INSERT INTO t VALUES (4)")
            assert reading.execute("SELECT count(*) FROM t").fetchone() == (2,)
        conn.execute("INSERT INTO t VALUES (5)")
    assert other_process_can_write(database)


def _hold_the_file(database: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"conn = duckdb.connect({str(database)!r})\n"
            "print('locked', flush=True)\n"
            f"time.sleep({seconds})\n"
            "conn.close()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_open_waits_while_another_process_holds_the_file(database: Path) -> None:
    holder = _hold_the_file(database, 1.5)
    started = time.monotonic()
    with warehouse.open_warehouse(database, read_only=True, wait_seconds=30) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert time.monotonic() - started >= 0.5
    holder.wait(10)


def test_open_gives_up_after_wait_seconds_and_opens_later(database: Path) -> None:
    holder = _hold_the_file(database, 60)
    try:
        started = time.monotonic()
        with (
            pytest.raises(duckdb.IOException, match="lock"),
            warehouse.open_warehouse(database, wait_seconds=0.5),
        ):
            pass
        assert time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait(10)
    with warehouse.open_warehouse(database, wait_seconds=30) as conn:  # the failure left no state
        conn.execute("INSERT INTO t VALUES (6)")


def test_a_connection_opened_here_in_the_other_mode_is_waited_out(database: Path) -> None:
    """A plain read-only `duckdb.connect` of the file in this process (as `status` makes)
    refuses a read-write open beside it; the writer waits until it is closed."""
    raw = duckdb.connect(str(database), read_only=True)
    closer = threading.Timer(0.5, raw.close)
    closer.start()
    started = time.monotonic()
    with warehouse.open_warehouse(database, wait_seconds=30) as conn:
        conn.execute("INSERT INTO t VALUES (7)")
    assert time.monotonic() - started >= 0.4
    closer.join(10)
