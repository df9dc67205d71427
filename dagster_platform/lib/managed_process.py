"""A background process the platform starts and stops itself: a pid file, a log file and a
stop that escalates from SIGTERM to SIGKILL.

The embedded broker and the local vLLM server are both such processes; supervisors (systemd,
supervisord) would be heavier than the one pid file `make run` needs, and psutil alone does not
remember which process a folder started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        return stat.read_text().split(") ", 1)[-1].split(" ", 1)[0] != "Z"
    return True


@dataclass(frozen=True)
class ManagedProcess:
    """One process per `pid_file`; its output is appended to `log_file`."""

    pid_file: Path
    log_file: Path

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive, else None (a stale file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if process_alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def spawn(self, command: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start `command` in its own session, detached from this terminal; record its pid."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log_handle:
            process = subprocess.Popen(
                command,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=None if env is None else dict(env),
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the process and its session's children; the pid stopped, None if none ran."""
        pid = self.running_pid()
        if pid is None:
            return None
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.05)
        if process_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _signal_group(pid: int, signum: signal.Signals) -> None:
    """Signal the session `pid` leads (workers it forked too), else `pid` alone."""
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
