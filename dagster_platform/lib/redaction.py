"""The one list of what counts as a secret or personal data in free text, and how to remove it.

Logs mask these values (`dagster_platform.lib.logs.mask_text`) and the fine-tuning dataset replaces
them with typed placeholders such as `<EMAIL>`, so a model never learns a person's address and
the "no personal data left" check looks for exactly what the scrubber removes.

Why not presidio: its recognisers need a spaCy model downloaded at run time (we run offline)
and it has none for Korean phone or resident-registration numbers. detect-secrets finds
secrets but not personal data. The patterns are anchored so ordinary operations text (host
names, application ids, timestamps, percentages, offsets) is left alone; the tests hold both.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# Not inside an identifier such as `application_1700000000000_0042` or `INC-2026-0042`
_START = r"(?<![\w\-+.])"
_END = r"(?![\w\-]|\.\d)"
_SECRET_KEYS = (
    r"password|passwd|pwd|secret|client[_\-]?secret|secret[_\-]?key|token|api[_\-]?key"
    r"|access[_\-]?key|private[_\-]?key|비밀번호|패스워드|토큰"
)
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|3[0689]|6(?:011|5)")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and _luhn(digits)


def _phone_digits(match: str) -> bool:
    return 8 <= len(re.sub(r"\D", "", match)) <= 15


@dataclass(frozen=True)
class Rule:
    """One kind of finding. When the pattern has a `value` group only that group is replaced,
    so `password=hunter2` becomes `password=<SECRET>` and stays readable."""

    kind: str
    pattern: re.Pattern[str]
    placeholder: str
    valid: Callable[[str], bool] | None = None


# Order matters: a private key or bearer header is removed whole before its parts could match
RULES: tuple[Rule, ...] = (
    Rule(
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[\s\S]*)"
        ),
        "<PRIVATE_KEY>",
    ),
    Rule(
        "bearer_token",
        re.compile(
            r"(?i)\b(?:authorization\s*[:=]\s*(?:bearer|basic)\s+(?![<*])(?P<value>[^\s\"',;]+)"
            r"|(?:bearer|basic)\s+(?P<token>(?=[A-Za-z\-._~+/]*\d)[A-Za-z0-9\-._~+/]{6,}=*))"
        ),
        "<BEARER_TOKEN>",
    ),
    Rule("jwt", re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*"), "<JWT>"),
    Rule(
        "aws_access_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"), "<AWS_ACCESS_KEY>"
    ),
    Rule(
        "api_token",
        re.compile(
            r"\b(?:sk-(?:ant-|proj-)?[\w\-]{20,}|sk_live_\w{16,}|rk_live_\w{16,}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{22,}|xox[abprs]-[\w\-]{10,}"
            r"|AIza[\w\-]{35}|hf_[A-Za-z0-9]{30,}|glpat-[\w\-]{20,})"
        ),
        "<API_TOKEN>",
    ),
    Rule(
        "secret_assignment",
        re.compile(
            rf"(?i)(?<![A-Za-z])[\w.\-]*(?:{_SECRET_KEYS})[\"']?\s*[=:]\s*[\"']?"
            r"(?![<*])(?!(?:bearer|basic)\b)(?P<value>[^\s\"',;&]+)"
        ),
        "<SECRET>",
    ),
    Rule(
        "email",
        re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
        "<EMAIL>",
    ),
    Rule(
        "credit_card", re.compile(rf"{_START}\d(?:[ \-]?\d){{12,18}}{_END}"), "<CREDIT_CARD>", _card
    ),
    Rule(
        "korean_rrn",
        re.compile(rf"{_START}\d{{2}}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])-[1-8]\d{{6}}{_END}"),
        "<KOREAN_RRN>",
    ),
    Rule(
        "us_ssn",
        re.compile(rf"{_START}(?!000|666|9\d\d)\d{{3}}-(?!00)\d{{2}}-(?!0000)\d{{4}}{_END}"),
        "<US_SSN>",
    ),
    Rule(
        "phone",
        re.compile(
            rf"{_START}(?:(?:\+82[\-.\s]?|0)1[016789][\-.\s]?\d{{3,4}}[\-.\s]?\d{{4}}"
            r"|0(?:2|[3-6][1-5])-\d{3,4}-\d{4}"
            r"|\+[1-9]\d{0,2}(?:[\-.\s]?\(?\d{1,4}\)?){2,5}"
            rf"|(?:\(\d{{3}}\)\s?|\d{{3}}[\-.])\d{{3}}[\-.]\d{{4}}){_END}"
        ),
        "<PHONE>",
        _phone_digits,
    ),
)


def _apply(rule: Rule, text: str, replacement: str, counts: Counter[str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if rule.valid is not None and not rule.valid(match[0]):
            return match[0]
        counts[rule.kind] += 1
        group = next((g for g in ("value", "token") if match.groupdict().get(g)), None)
        if group is None:
            return replacement
        start, end = match.span(group)
        return match[0][: start - match.start()] + replacement + match[0][end - match.start() :]

    return rule.pattern.sub(substitute, text)


def scrub(text: str, replacement: str | None = None) -> tuple[str, Counter[str]]:
    """`text` with every finding replaced — by its kind's placeholder, or by `replacement` —
    and how many of each kind were replaced."""
    counts: Counter[str] = Counter()
    for rule in RULES:
        text = _apply(rule, text, replacement or rule.placeholder, counts)
    return text, counts


def find(text: str) -> list[str]:
    """The kinds of secret or personal data in `text`, sorted; empty when it is clean."""
    return sorted(scrub(text)[1])
