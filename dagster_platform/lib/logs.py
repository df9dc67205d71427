"""Structured, masked logging.

Every log line is one JSON object carrying the Dagster run id (and step, when there is one),
and secrets or personal data never reach a handler: keys that name them are replaced, and
values that look like them (e-mail addresses, tokens, keys, phone, card or resident-registration
numbers: `dagster_platform.lib.redaction`) are masked wherever they appear in a message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster_platform.lib.redaction import scrub

MASK = "***MASKED***"

SENSITIVE_KEY_PARTS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
    "email",
    "e_mail",
    "phone",
    "mobile",
    "ssn",
    "credit_card",
)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def is_sensitive_key(key: str) -> bool:
    normalised = re.sub(r"[^a-z0-9]+", "_", key.lower())
    return any(part in normalised for part in SENSITIVE_KEY_PARTS)


def mask_text(text: str) -> str:
    """Mask values that look like secrets or personal data inside free text (the patterns of
    `dagster_platform.lib.redaction`, which the fine-tuning dataset is scrubbed with too)."""
    return scrub(text, MASK)[0]


def mask(value: Any, key: str | None = None) -> Any:
    """Return `value` with sensitive keys and sensitive-looking strings masked, recursively.

    Only plain data (text, mappings, lists, plain tuples and sets) is rewritten; any other
    object, a named tuple included, is returned as it is.
    """
    if key is not None and is_sensitive_key(key):
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list) or (type(value) in (tuple, set, frozenset)):
        return [mask(v) for v in value]
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a caller attached with `extra=` (Dagster's own are left out)."""
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _RECORD_ATTRIBUTES and not k.startswith("dagster")
    }


class MaskingFilter(logging.Filter):
    """Masks the message and every `extra` field of a record in place.

    It never drops a record and never raises: a logging filter that fails would fail the
    code that logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = mask_text(record.getMessage())
            record.args = None
            for key, value in record_fields(record).items():
                setattr(record, key, mask(value, key))
        except Exception:
            record.msg, record.args = MASK, None
        return True


def _dagster_context(record: logging.LogRecord) -> dict[str, Any]:
    meta = getattr(record, "dagster_meta", None)
    if not isinstance(meta, Mapping):
        return {}
    event = getattr(record, "dagster_event", None)
    context = {
        "run_id": meta.get("run_id"),
        "job": meta.get("job_name"),
        "step": meta.get("step_key"),
        "event": getattr(event, "event_type_value", None),
    }
    return {k: v for k, v in context.items() if v}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, run id, then `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None)
        # Dagster prefixes the message with job, run and step; keep the caller's own words
        message = meta.get("orig_message") if isinstance(meta, Mapping) else None
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_text(message or record.getMessage()),
        }
        payload.update(_dagster_context(record))
        for key, value in record_fields(record).items():
            payload.setdefault(key, mask(value, key))
        if record.exc_info:
            payload["exception"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False, default=str)


def get_logger(name: str) -> logging.Logger:
    """A module logger that masks at the source, before any handler (Dagster's included) sees it."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, MaskingFilter) for f in logger.filters):
        logger.addFilter(MaskingFilter())
    return logger


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now, so a replaced or captured stream keeps working."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_cli_logging(
    level: str = "INFO", log_file: Path | None = None, verbose: bool = False
) -> None:
    """A command prints what it did; its log lines (JSON, masked) go to `log_file`, and to
    stderr only with `verbose` — errors reach stderr always. Idempotent."""
    root = logging.getLogger("dagster_platform")
    root.setLevel(level)
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler | _CliFileHandler)]:
        root.removeHandler(handler)
        handler.close()
    stderr = _StderrHandler()
    stderr.setLevel(level if verbose or log_file is None else logging.ERROR)
    handlers: list[logging.Handler] = [stderr]
    if log_file is not None:
        handlers.append(_CliFileHandler(log_file, fallback=stderr, level=level))
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        handler.addFilter(MaskingFilter())
        root.addHandler(handler)


class _CliFileHandler(logging.FileHandler):
    """The command's log file, created with its folder on the first record (most commands
    never log, and `status` must find a state folder that does not exist yet as it is). When
    it cannot be written (a read-only state folder), the lines go to stderr instead."""

    def __init__(self, path: Path, fallback: logging.Handler, level: str) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self._fallback, self._fallback_level = fallback, level

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            try:
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
                self.stream = self._open()
            except OSError:
                self._fallback.setLevel(self._fallback_level)
                logging.getLogger("dagster_platform").removeHandler(self)
                self._fallback.handle(record)
                return
        super().emit(record)


def dagster_python_logs_config(log_file: str, level: str = "INFO") -> dict[str, Any]:
    """The `python_logs` section of dagster.yaml: our loggers join the run's event log, and
    every run's records are also written, masked, as JSON lines carrying the run id."""
    return {
        "managed_python_loggers": ["dagster_platform"],
        "python_log_level": level,
        "dagster_handler_config": {
            "handlers": {
                "json_file": {
                    "class": "logging.FileHandler",
                    "level": level,
                    "filename": log_file,
                    "formatter": "json",
                    "filters": ["masking"],
                }
            },
            "formatters": {"json": {"()": "dagster_platform.lib.logs.JsonFormatter"}},
            "filters": {"masking": {"()": "dagster_platform.lib.logs.MaskingFilter"}},
        },
    }
