"""Prometheus metrics of the API and the ingestion, added up over every process that records.

Landings run in short-lived Dagster run processes (one pod per step on Kubernetes) and the API
in a process of its own, so samples are not kept in memory: every process writes them to
files in one shared folder (prometheus_client's multiprocess mode) and whoever serves them —
`GET /metrics` of the API or `dagster-platform metrics` — adds the files up at scrape time.

The folder is `PROMETHEUS_MULTIPROC_DIR` when the environment sets it, else
`<state>/metrics`. Nothing happens at import: the first recording creates the folder, points
`PROMETHEUS_MULTIPROC_DIR` at it (prometheus_client reads it when a file is opened), makes
metric values file-backed, and creates the metric objects, once per process. A process writes
`<type>_<host>-<pid>.db` files: the host is in the name because pids repeat across containers
that share the volume.

Counters and histograms are summed over the files, so totals stay right after a process has
exited. The lag gauge keeps the value set most recently by any process (`mostrecent`), so the
lag a finished landing left is what the scrape shows until the next landing.

Files of finished processes would pile up (one set per landing run) and slow every scrape, so
a process that is done recording folds its files into `<type>_archive.db` and deletes them:
a landing does that right after recording (`record_landing`), the API when it shuts down
(`retire`). Folding and scraping take a file lock on the folder (exclusive and shared), so a
scrape never counts a folded file twice or misses it. A process that is killed before it
folds leaves its files behind; they still count correctly, they are just not compacted.

Labels hold only bounded, non-personal values: stream families and tables, dead-letter
reasons, agent routes, route templates (never raw paths), methods, status codes, ratings.
Never user text, keys or ids. Recording never raises: a failure is logged once and the work
it measured goes on.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from dagster_platform.lib.logs import get_logger
from dagster_platform.settings import get_settings

log = get_logger(__name__)


class LandingFigures(Protocol):
    """What a landing run reports (kafka's `LandingReport`), as far as its metrics read it."""

    family: str
    landed: Mapping[str, int]
    reasons: Mapping[str, int]
    remaining_lag: int


ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "dagster_platform_"
ARCHIVE = "archive"
LOCK_FILE = ".lock"

LANDING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ANSWER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,48}")

# Per-process files that can be folded into the archive: counters, histograms and summaries
# add up; a `mostrecent` gauge keeps the value with the latest timestamp. Other gauge modes
# are per live process and are never folded (this module makes none).
_ADDITIVE = frozenset({"counter", "histogram", "summary"})
_MOST_RECENT = frozenset({"gauge_mostrecent"})


class _Metrics:
    """The metric objects of one process; registered nowhere, the folder is the registry."""

    def __init__(self) -> None:
        self.events_landed = Counter(
            f"{PREFIX}events_landed",
            "Kafka events landed into a warehouse table.",
            ["family", "table"],
            registry=None,
        )
        self.events_dead_lettered = Counter(
            f"{PREFIX}events_dead_lettered",
            "Kafka events sent to the dead-letter table, by reason.",
            ["family", "reason"],
            registry=None,
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}consumer_lag_messages",
            "Messages left on the topic after the most recent landing of the family.",
            ["family"],
            registry=None,
            multiprocess_mode="mostrecent",
        )
        self.landing_duration = Histogram(
            f"{PREFIX}landing_duration_seconds",
            "Wall time of one landing run (consume, write, commit).",
            ["family"],
            registry=None,
            buckets=LANDING_BUCKETS,
        )
        self.answer_latency = Histogram(
            f"{PREFIX}answer_latency_seconds",
            "Time the assistant took to answer a question of /ask, by the route it chose.",
            ["route"],
            registry=None,
            buckets=ANSWER_BUCKETS,
        )
        self.api_requests = Counter(
            f"{PREFIX}api_requests",
            "HTTP requests to the API, by route template, method and status code.",
            ["path", "method", "status"],
            registry=None,
        )
        self.api_request_duration = Histogram(
            f"{PREFIX}api_request_duration_seconds",
            "Time the API took to respond, by route template and method.",
            ["path", "method"],
            registry=None,
            buckets=REQUEST_BUCKETS,
        )
        self.feedback_received = Counter(
            f"{PREFIX}feedback_received",
            "Ratings of answers accepted by the API, by rating.",
            ["rating"],
            registry=None,
        )


class _State:
    """What this process set up: the folder, the value class, the metric objects."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.value_class: Any = None
        self.metrics: _Metrics | None = None
        self.env_set: str | None = None  # the PROMETHEUS_MULTIPROC_DIR value set here
        self.original_value_class: Any = None
        self.warned: set[tuple[str, type]] = set()


_state = _State()
_lock = threading.RLock()
P = ParamSpec("P")


# --- the folder -----------------------------------------------------------------------------


def process_identifier() -> str:
    """`<host>-<pid>`: distinct for every process writing the folder, on any host.

    prometheus_client takes the part after the last `_` of a gauge file as the process, so
    the host name loses anything but letters, digits, dots and dashes."""
    return f"{_host()}-{os.getpid()}"


@functools.cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-") or "host"


def metrics_dir(directory: Path | str | None = None) -> Path:
    """The folder the metrics go to: `PROMETHEUS_MULTIPROC_DIR` when someone else set it,
    else `directory`, else the folder in use, else `<state>/metrics` of the settings."""
    env = os.environ.get(ENV)
    if env and env != _state.env_set:
        return Path(env).absolute()
    if directory is not None:
        return Path(directory).absolute()
    if _state.directory is not None:
        return _state.directory
    return get_settings().metrics_dir.absolute()


def _metrics(directory: Path | str | None = None) -> _Metrics:
    """This process's metric objects, recording into the folder (see :func:`metrics_dir`):
    made on first use, and afresh after a fold or when the folder changes (a test, an app of
    other settings), the old folder's files closed first."""
    wanted = metrics_dir(directory)
    if _state.metrics is not None and _state.directory == wanted:
        return _state.metrics
    if _state.directory != wanted:
        _close()
        wanted.mkdir(parents=True, exist_ok=True)
        env = os.environ.get(ENV)
        if env is None or env == _state.env_set:
            os.environ[ENV] = str(wanted)
            _state.env_set = str(wanted)
        if _state.original_value_class is None:
            _state.original_value_class = prometheus_values.ValueClass
        # Every metric object created from now on (and every labelled child, which is made
        # on first use) writes to `<type>_<host>-<pid>.db` in the folder.
        _state.value_class = prometheus_values.MultiProcessValue(
            process_identifier=process_identifier
        )
        _state.directory = wanted
    prometheus_values.ValueClass = _state.value_class
    _state.metrics = _Metrics()
    return _state.metrics


def _close() -> None:
    """Close this process's files and forget its metric objects (the files stay)."""
    if _state.value_class is not None:
        _state.value_class.close_all_files()
    _state.metrics = None


def reset() -> None:
    """Forget the folder, close the files and undo the environment and value class this
    module set: the next recording starts as in a fresh process (for tests)."""
    global _state
    with _lock:
        _close()
        if _state.env_set is not None and os.environ.get(ENV) == _state.env_set:
            del os.environ[ENV]
        if _state.original_value_class is not None:
            prometheus_values.ValueClass = _state.original_value_class
        _state = _State()


@contextmanager
def _folder_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Folding takes the folder exclusively, scraping shared: a scrape sees a file either
    before it is folded or in the archive, never both or neither."""
    with open(directory / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fold(directory: Path, identifier: str) -> int:
    """Add the files of process `identifier` into the archive files and delete them; returns
    how many files were folded. Only for a process that writes no more to them."""
    with _folder_lock(directory, exclusive=True):
        suffix = f"_{identifier}.db"
        folded = 0
        for path in sorted(directory.glob(f"*{suffix}")):
            kind = path.name[: -len(suffix)]
            if kind not in _ADDITIVE | _MOST_RECENT:
                continue
            archive = directory / f"{kind}_{ARCHIVE}.db"
            merged: dict[str, tuple[float, float]] = {}
            for source in (archive, path):
                if not source.exists():
                    continue
                for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(source)):
                    if kind in _ADDITIVE:
                        merged[key] = (merged.get(key, (0.0, 0.0))[0] + value, 0.0)
                    elif key not in merged or stamp >= merged[key][1]:
                        merged[key] = (value, stamp)
            # A new archive replaces the old one at once; a crash before the process file is
            # deleted would count that file twice, a crash before the replace loses nothing.
            staging = directory / f".{kind}_{ARCHIVE}.staging"
            staging.unlink(missing_ok=True)
            table = MmapedDict(str(staging))
            try:
                for key, (value, stamp) in merged.items():
                    table.write_value(key, value, stamp)
            finally:
                table.close()
            os.replace(staging, archive)
            path.unlink()
            folded += 1
        return folded


def retire() -> None:
    """Fold this process's files into the archive (a process that is done recording, or one
    about to exit); a later recording starts new files. Never raises."""
    with _lock:
        if _state.directory is None:
            return
        try:
            _close()
            fold(_state.directory, process_identifier())
        except Exception as exc:  # metrics never fail the work they measure
            _warn("retire", exc)


# --- recording ------------------------------------------------------------------------------


def _warn(what: str, exc: Exception) -> None:
    if (what, type(exc)) not in _state.warned:
        _state.warned.add((what, type(exc)))
        log.warning(
            "metrics not recorded (warned once per kind of failure)",
            extra={"recorder": what, "error": f"{type(exc).__name__}: {exc}"},
        )


def _never_raises(function: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            with _lock:
                function(*args, **kwargs)
        except Exception as exc:  # metrics never fail the work they measure
            _warn(function.__name__, exc)

    return wrapper


def label(value: object, default: str = "none") -> str:
    """A label value that cannot carry free text: short identifiers pass, anything else is
    `other`, nothing is `default`."""
    if value is None or value == "":
        return default
    text = str(value)
    return text if _LABEL.fullmatch(text) else "other"


@_never_raises
def record_landing(
    report: LandingFigures, seconds: float, directory: Path | str | None = None
) -> None:
    """What one landing run did, then fold this process's files (a run lands once)."""
    metrics = _metrics(directory)
    family = label(report.family)
    for table, rows in report.landed.items():
        metrics.events_landed.labels(family, label(table)).inc(rows)
    for reason, count in report.reasons.items():
        metrics.events_dead_lettered.labels(family, label(reason)).inc(count)
    metrics.consumer_lag.labels(family).set(report.remaining_lag)
    metrics.landing_duration.labels(family).observe(seconds)
    retire()


@_never_raises
def record_request(
    template: str | None,
    method: str,
    status: int,
    seconds: float,
    directory: Path | str | None = None,
) -> None:
    """One API response. `template` is the path of the route that answered (`/ask`, the app's
    own finite set), never the raw path; None when no route matched (`unmatched`)."""
    metrics = _metrics(directory)
    path = template if template and len(template) <= 100 else UNMATCHED
    method = method if method in METHODS else "other"
    metrics.api_requests.labels(path, method, str(status)).inc()
    metrics.api_request_duration.labels(path, method).observe(seconds)


@_never_raises
def record_answer(route: str | None, seconds: float, directory: Path | str | None = None) -> None:
    """One answer of /ask, by the agent route the router chose (`none` when it chose none)."""
    _metrics(directory).answer_latency.labels(label(route)).observe(seconds)


@_never_raises
def record_feedback(rating: str, directory: Path | str | None = None) -> None:
    """One rating accepted by the API."""
    _metrics(directory).feedback_received.labels(label(rating)).inc()


# --- serving --------------------------------------------------------------------------------


class FolderCollector(MultiProcessCollector):
    """prometheus_client's collector of the folder's files, read under the shared lock."""

    def collect(self) -> Iterable[Metric]:
        with _folder_lock(Path(self._path), exclusive=False):
            return list(super().collect())


def registry(directory: Path | str | None = None) -> CollectorRegistry:
    """A registry adding up every file of the folder (see :func:`metrics_dir`)."""
    folder = metrics_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    collected = CollectorRegistry()
    FolderCollector(collected, path=str(folder))
    return collected


def exposition(directory: Path | str | None = None) -> bytes:
    """The Prometheus text exposition of the folder."""
    return generate_latest(registry(directory))


def exposition_for(accept: str, directory: Path | str | None = None) -> tuple[bytes, str]:
    """The exposition in the format an `Accept` header asks for (OpenMetrics for Prometheus,
    the classic text format otherwise) and its content type, negotiated as
    prometheus_client's own HTTP exporter does."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry(directory)), content_type


def serve(host: str, port: int, directory: Path | str | None = None) -> Callable[[], None]:
    """Serve the folder's metrics over HTTP (any path) in a background thread; returns a
    function that stops the server."""
    server, thread = start_http_server(port, addr=host, registry=registry(directory))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def wait_forever(poll_s: float = 3600.0) -> None:
    """Block the calling thread (the exporter's) until it is interrupted."""
    while True:
        time.sleep(poll_s)
