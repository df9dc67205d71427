from __future__ import annotations

from collections import Counter

import pytest

from dagster_platform.lib.redaction import RULES, find, scrub
from tests.support.state import SAMPLE_DIR

KEY_BLOCK = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
    "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "kind", "secret", "expected"),
    [
        ("mail jane.doe@example.co.kr now", "email", "jane.doe", "mail <EMAIL> now"),
        ("call 010-1234-5678 tonight", "phone", "1234-5678", "call <PHONE> tonight"),
        ("call +82 10 9876 5432 tonight", "phone", "9876", "call <PHONE> tonight"),
        ("전화 01098765432 주세요", "phone", "98765432", "전화 <PHONE> 주세요"),
        ("office +1 415-555-0132.", "phone", "555-0132", "office <PHONE>."),
        ("rrn 900101-1234567 ok", "korean_rrn", "1234567", "rrn <KOREAN_RRN> ok"),
        ("ssn 123-45-6789 ok", "us_ssn", "6789", "ssn <US_SSN> ok"),
        ("card 4111 1111 1111 1111 ok", "credit_card", "1111 1111", "card <CREDIT_CARD> ok"),
        ("card 5500-0000-0000-0004", "credit_card", "0004", "card <CREDIT_CARD>"),
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end",
            "jwt",
            "eyJhbGci",
            "token <JWT> end",
        ),
        (
            "Authorization: Bearer abcDEF123456ghiJKL",
            "bearer_token",
            "abcDEF",
            "Authorization: Bearer <BEARER_TOKEN>",
        ),
        ("authorization: basic dXNlcjpwYXNz", "bearer_token", "dXNlcjpw", None),
        ("key AKIAIOSFODNN7EXAMPLE used", "aws_access_key", "AKIAIOSF", None),
        (f"before\n{KEY_BLOCK}\nafter", "private_key", "MIIEpAIB", "before\n<PRIVATE_KEY>\nafter"),
        ("jdbc password=hunter2 set", "secret_assignment", "hunter2", "jdbc password=<SECRET> set"),
        (
            '{"db_password": "s3cr3t!"}',
            "secret_assignment",
            "s3cr3t",
            '{"db_password": "<SECRET>"}',
        ),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "secret_assignment", "wJalr", None),
        ("비밀번호: qwer1234 입니다", "secret_assignment", "qwer1234", "비밀번호: <SECRET> 입니다"),
        ("use sk-proj-abcdefghijklmnopqrstuvwxyz0123", "api_token", "sk-proj", "use <API_TOKEN>"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_token", "ghp_", "gh <API_TOKEN>"),
    ],
)
def test_each_kind_is_replaced_by_its_placeholder_and_counted(
    text: str, kind: str, secret: str, expected: str | None
) -> None:
    scrubbed, counts = scrub(text)
    assert counts == Counter({kind: 1})
    assert secret not in scrubbed
    assert f"<{kind.upper()}>" in scrubbed or kind == "secret_assignment"
    if expected is not None:
        assert scrubbed == expected
    assert find(text) == [kind]
    assert find(scrubbed) == []


def test_every_rule_has_a_test_above() -> None:
    assert {rule.kind for rule in RULES} == {
        "email",
        "phone",
        "korean_rrn",
        "us_ssn",
        "credit_card",
        "jwt",
        "bearer_token",
        "aws_access_key",
        "private_key",
        "secret_assignment",
        "api_token",
    }


def test_counts_add_up_over_one_text() -> None:
    text = "a@b.io, c@d.io and 010-1111-2222; password=x, Bearer 9f8e7d6c5b4a"
    scrubbed, counts = scrub(text)
    assert counts == Counter(email=2, phone=1, secret_assignment=1, bearer_token=1)
    assert scrubbed == "<EMAIL>, <EMAIL> and <PHONE>; password=<SECRET>, Bearer <BEARER_TOKEN>"


def test_a_given_replacement_keeps_the_readable_prefix() -> None:
    scrubbed, _ = scrub("Bearer abc123.def-456 then token: t0k3n", "***")
    assert scrubbed == "Bearer *** then token: ***"


def test_an_unterminated_private_key_is_removed_to_the_end() -> None:
    scrubbed, counts = scrub("key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0")
    assert scrubbed == "key:\n<PRIVATE_KEY>"
    assert counts == Counter(private_key=1)


def test_a_number_failing_the_luhn_check_is_no_card() -> None:
    assert find("card 4111 1111 1111 1112") == []


@pytest.mark.parametrize(
    "text",
    [
        "etl-prod-worker-02 and analytics-prod-kafka-01 (10.20.3.17) are healthy",
        "yarn application -kill application_1700000000000_0042 on etl-prod",
        "container_e17_1794191400000_0381_01_000002 exited with code 137",
        "window 2026-11-20T08:41:07Z .. 2026-11-20T09:00:00+09:00, 87.5 % CPU, +12.5 %",
        "incident INC-2026-0042, offset 1234567, epoch 1711011234567 ms, 4111111111111111111111",
        "max_tokens: 512, completion_tokens=42, the bearer of news, basic troubleshooting",
        "hdfs dfs -du -s -h /data/1/yarn/local | sort -h; 10:30-11:00; 3-4 minutes; 2x cores",
        "Host etl-prod-worker-10 is a worker of cluster etl-prod on rack r02, 32 vCores, 256.0 GB",
        "ssh etl@etl-prod-worker-02 and kafka-consumer-groups --group dagster-platform-raw",
    ],
)
def test_operations_text_is_left_alone(text: str) -> None:
    assert scrub(text) == (text, Counter())


def test_the_sample_runbooks_and_incidents_have_no_findings() -> None:
    paths = [*sorted((SAMPLE_DIR / "runbooks").glob("*.md")), SAMPLE_DIR / "incidents.jsonl"]
    findings = {p.name: find(p.read_text(encoding="utf-8")) for p in paths if p.is_file()}
    assert len(findings) >= 16
    assert {name: kinds for name, kinds in findings.items() if kinds} == {}
