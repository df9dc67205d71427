"""A real, throwaway PostgreSQL server for tests: Debian's server binaries, a private cluster.

`make test` installs Debian's `postgresql` package when its server binaries are absent; this
module never installs anything. It runs `initdb` into a fresh temporary folder and starts
`postgres` on a free TCP port of 127.0.0.1, with a superuser that logs in by password
(scram-sha-256, on TCP and on the Unix socket alike, so nothing is trusted without one). Debian's
own service cluster (port 5432), if one runs, is neither used nor touched.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` system user
(the package creates it): the folder is chowned to it and every server command runs through
`runuser -u postgres --`. Durability is switched off (fsync, full page writes): the cluster
lives for one test session and is deleted afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from dagster_platform.kafka.broker import free_port

SERVER_GLOB = "/usr/lib/postgresql/*/bin/initdb"
SYSTEM_USER = "postgres"  # the owner of the cluster when the tests run as root
SUPERUSER = "dagster_platform"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says what to do."""


def server_bin_dir() -> Path:
    """The bin folder of the newest PostgreSQL server from Debian's packages."""
    found = glob.glob(SERVER_GLOB)
    if not found:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries not found ({SERVER_GLOB}). Run `make test`: it "
            "installs Debian's `postgresql` package when it is absent (or install it yourself: "
            "apt-get install -y --no-install-recommends postgresql)."
        )

    def version(initdb: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(initdb).parent.parent.name))

    return Path(max(found, key=version)).parent


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where to connect and as whom."""

    host: str
    port: int
    user: str
    password: str
    root: Path  # data, socket and log folders

    def connect(self, database: str = "postgres"):
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its name."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        conn = self.connect()
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    @property
    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


class _Runner:
    """Runs the server's commands as a user that initdb accepts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError as exc:
                raise PostgresUnavailable(
                    f"running as root, but there is no `{SYSTEM_USER}` user to own the test "
                    "cluster (initdb refuses root). Run `make test`, which installs Debian's "
                    "`postgresql` package (it creates that user)."
                ) from exc
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, but `runuser` is not installed")
            for path in (root, *root.rglob("*")):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def __call__(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in argv]
        if self.as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        # cwd: the server's user must be able to enter it (initdb looks itself up from there)
        completed = subprocess.run(
            command,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if check and completed.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(command)} failed ({completed.returncode}):\n"
                f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
            )
        return completed


@contextmanager
def postgres_server(attempts: int = 3) -> Iterator[PostgresServer]:
    """Start a private PostgreSQL cluster on 127.0.0.1; stop and delete it on exit."""
    bin_dir = server_bin_dir()
    # in /tmp, not in pytest's tmp_path: pytest's base folder is private to the user running
    # the tests, and the `postgres` user must reach this one
    root = Path(tempfile.mkdtemp(prefix="dagster-platform-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir(mode=0o700)
    password = secrets.token_urlsafe(18)
    (root / "pwfile").write_text(password + "\n", encoding="utf-8")
    started = False
    try:
        run = _Runner(root)
        run(
            bin_dir / "initdb",
            "--pgdata",
            data,
            "--username",
            SUPERUSER,
            "--pwfile",
            root / "pwfile",
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        (root / "pwfile").unlink()
        for _ in range(attempts):
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={sockets} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = run(
                bin_dir / "pg_ctl",
                "--pgdata",
                data,
                "--log",
                root / "server.log",
                "--options",
                options,
                "--wait",
                "--timeout",
                str(START_TIMEOUT_S),
                "start",
                check=False,
            )
            if done.returncode == 0:
                started = True
                break
            server = PostgresServer("127.0.0.1", port, SUPERUSER, password, root)
            if "could not bind" not in server.log:  # only a port taken meanwhile is retried
                break
        if not started:
            raise PostgresUnavailable(
                f"PostgreSQL did not start:\n{done.stdout[-2000:]}{done.stderr[-2000:]}\n"
                f"server log:\n{server.log[-4000:]}"
            )
        yield PostgresServer("127.0.0.1", port, SUPERUSER, password, root)
    finally:
        if started:
            run(bin_dir / "pg_ctl", "--pgdata", data, "--mode", "fast", "--wait", "stop")
        shutil.rmtree(root, ignore_errors=True)
