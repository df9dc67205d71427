import json
import logging
from pathlib import Path

import dagster as dg
import pytest

from dagster_platform.lib.logs import (
    MASK,
    JsonFormatter,
    MaskingFilter,
    configure_cli_logging,
    dagster_python_logs_config,
    get_logger,
    mask,
    mask_text,
)


@pytest.mark.parametrize(
    "text",
    [
        "contact jane.doe@example.com now",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "header bearer abc123.def-456",
        "call 010-1234-5678 tonight",
        "call +82 10 1234 5678 tonight",
        "rrn 900101-1234567",
        "ssn 123-45-6789",
        "jdbc url with password=hunter2 set",
        "api_key: sk-live-abcdef",
    ],
)
def test_sensitive_values_are_masked_in_free_text(text: str) -> None:
    masked = mask_text(text)
    assert MASK in masked
    for secret in (
        "jane.doe",
        "eyJhbGci",
        "abc123",
        "1234-5678",
        "1234 5678",
        "1234567",
        "6789",
        "hunter2",
        "sk-live",
    ):
        assert secret not in masked


@pytest.mark.parametrize(
    "text",
    [
        "application_1763251200000_0142 on etl-prod-worker-07 (10.20.3.17)",
        "window 2026-11-20T08:41:07Z .. 2026-11-20T09:00:00Z, 87.5 % CPU",
        "runbook rb-high-cpu, incident INC-2026-0042, offset 1234567",
    ],
)
def test_operational_values_are_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_sensitive_keys_are_masked_recursively() -> None:
    payload = {
        "user": "svc_etl",
        "db_password": "p@ss",
        "Auth-Token": "t",
        "contact": {"email": "a@b.io", "Phone_Number": "010-0000-0000", "team": "dp"},
        "notes": ["reach me at a@b.io"],
    }
    assert mask(payload) == {
        "user": "svc_etl",
        "db_password": MASK,
        "Auth-Token": MASK,
        "contact": {"email": MASK, "Phone_Number": MASK, "team": "dp"},
        "notes": [f"reach me at {MASK}"],
    }


def _record(msg: str, args: tuple = (), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dagster_platform.test", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_filter_masks_message_arguments_and_extra_fields() -> None:
    record = _record("login by %s", ("ops@example.com",), token="abc", rows=3)
    assert MaskingFilter().filter(record) is True
    assert record.getMessage() == f"login by {MASK}"
    assert record.token == MASK
    assert record.rows == 3


def test_json_lines_carry_run_and_step_from_dagster() -> None:
    record = _record(
        "loaded",
        rows=12,
        secret="x",
        dagster_meta={"run_id": "r-123", "job_name": "j", "step_key": "hosts"},
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "loaded"
    assert line["run_id"] == "r-123"
    assert line["step"] == "hosts"
    assert line["rows"] == 12
    assert line["secret"] == MASK
    assert "dagster_meta" not in line


def test_module_loggers_mask_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    logger = get_logger("dagster_platform.tests.masking")
    with caplog.at_level(logging.INFO, logger="dagster_platform.tests.masking"):
        logger.info("user %s", "kim@example.com", extra={"password": "pw"})
    assert caplog.records[-1].getMessage() == f"user {MASK}"
    assert caplog.records[-1].password == MASK


def test_run_logs_are_masked_json_with_the_dagster_run_id(tmp_path: Path) -> None:
    """The dagster.yaml logging section: our loggers join the run and write masked JSON."""
    log_file = tmp_path / "runs.jsonl"

    @dg.asset
    def noisy() -> None:
        get_logger("dagster_platform.tests.run").info(
            "connecting as %s", "etl@example.com", extra={"api_key": "k-1", "host": "etl-prod"}
        )

    with dg.instance_for_test(
        overrides={"python_logs": dagster_python_logs_config(str(log_file))}
    ) as instance:
        result = dg.materialize([noisy], instance=instance)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    ours = [line for line in lines if line.get("message", "").startswith("connecting as")]
    assert ours, lines
    assert ours[0]["run_id"] == result.run_id
    assert ours[0]["message"] == f"connecting as {MASK}"
    assert ours[0]["api_key"] == MASK
    assert ours[0]["host"] == "etl-prod"
    assert "etl@example.com" not in log_file.read_text()


def test_dagster_event_records_pass_through_untouched(tmp_path: Path) -> None:
    """Dagster's own records (events are named tuples) are logged, not rewritten or broken."""
    log_file = tmp_path / "runs.jsonl"

    @dg.asset
    def broken() -> None:
        raise dg.Failure(description="source hosts.csv line 7 is bad; owner ops@example.com")

    with dg.instance_for_test(
        overrides={"python_logs": dagster_python_logs_config(str(log_file))}
    ) as instance:
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("source hosts.csv line 7 is bad")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = {line.get("event") for line in lines}
    assert {"STEP_FAILURE", "PIPELINE_FAILURE"} <= events
    assert all(line["run_id"] == result.run_id for line in lines if "run_id" in line)
    assert "ops@example.com" not in log_file.read_text()


def test_a_filter_never_raises() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    record = _record("value %s", (Unprintable(),))
    assert MaskingFilter().filter(record) is True
    assert record.getMessage() == MASK


def test_a_command_logs_to_its_file_and_prints_only_errors_unless_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "logs" / "cli.log"
    logger = get_logger("dagster_platform.tests.cli")
    try:
        configure_cli_logging("INFO", log_file=log_file)
        logger.info("landed", extra={"rows": 3, "api_key": "sk-live-123"})
        logger.error("broker down")
        quiet = capsys.readouterr().err
        configure_cli_logging("INFO", log_file=log_file, verbose=True)
        logger.info("asked")
        loud = capsys.readouterr().err
    finally:
        configure_cli_logging("INFO")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["message"] for line in lines] == ["landed", "broker down", "asked"]
    assert lines[0]["rows"] == 3 and lines[0]["api_key"] == MASK
    assert "landed" not in quiet and "broker down" in quiet
    assert "asked" in loud
