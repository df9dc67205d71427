"""Text documents as files: decoded, bounded, their YAML front matter split off, and their
Markdown lines told apart (headings, fenced code, body), with one set of rules for every reader.

A file is text when it holds no NUL byte and next to no control bytes, is not empty, is at
most `MAX_BYTES`, and decodes as UTF-8 (a BOM is dropped) or else as CP949, which older Korean
documents are still written in; anything else raises `DocumentRejected` with its reason rather
than yield mojibake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml

Reason = Literal["empty", "binary", "undecodable", "too_large", "invalid"]

MAX_BYTES = 20 * 1024 * 1024
BINARY_CONTROL_SHARE = 0.1  # text has next to no control bytes; random bytes have ~12 %

_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)$")
_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t\r]*$", re.MULTILINE)
# Bytes that occur in text: tab, line feed, form feed, carriage return, and everything from
# space up except DEL. What is left after deleting them are control bytes.
_TEXT_BYTES = bytes([9, 10, 12, 13, *range(32, 127), *range(128, 256)])


class DocumentRejected(Exception):
    """Why a file is not a readable document; each reader decides what that costs (the
    warehouse refuses the source, the knowledge base and the dataset skip the file)."""

    def __init__(self, reason: Reason, detail: str):
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def decode_bytes(data: bytes) -> str:
    """Text of `data`: UTF-8 (BOM dropped), else CP949, which older Korean documents are
    still written in; binary or undecodable content raises rather than yield mojibake."""
    if b"\0" in data:
        raise DocumentRejected("binary", "contains NUL bytes")
    controls = len(data.translate(None, _TEXT_BYTES))
    if data and controls / len(data) > BINARY_CONTROL_SHARE:
        raise DocumentRejected("binary", f"{controls} of {len(data)} bytes are control bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as utf8_error:
        try:
            text = data.decode("cp949")
        except UnicodeDecodeError:
            raise DocumentRejected(
                "undecodable",
                f"neither UTF-8 nor CP949 ({utf8_error.reason} at byte {utf8_error.start})",
            ) from None
    if not text.strip():
        raise DocumentRejected("empty", "no text" if not data else "only whitespace")
    return text


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """The text of a document file, or `DocumentRejected` saying why it is not one; the size
    is checked before reading so a stray dump is never loaded into memory."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DocumentRejected("too_large", f"{size} bytes, the limit is {max_bytes}")
    return decode_bytes(path.read_bytes())


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """YAML front matter (between `---` lines at the very top) and the Markdown after it."""
    first = text.partition("\n")[0]
    if first.rstrip() != "---":
        return {}, text
    start = len(first) + 1
    end = _FRONT_MATTER_END.search(text, start)
    if end is None:
        raise DocumentRejected("invalid", "front matter has no closing '---'")
    try:
        meta = yaml.safe_load(text[start : end.start()])
    except yaml.YAMLError as exc:
        raise DocumentRejected("invalid", f"front matter is not valid YAML: {exc}") from None
    if meta is not None and not isinstance(meta, dict):
        raise DocumentRejected("invalid", "front matter is not a mapping")
    return meta or {}, text[end.end() :]


BODY, CODE = 0, -1  # line kinds of `scan_lines` besides heading levels 1-6


def scan_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(kind, text) per line: the heading level and its text, `CODE` for a line of fenced
    code (fences included, so `# comment` in a shell block is no heading), else `BODY`."""
    fence: str | None = None
    for line in lines:
        marker = _FENCE.match(line)
        if fence is not None:
            closing = marker and marker[1][0] == fence[0] and len(marker[1]) >= len(fence)
            if closing and not marker[2].strip():
                fence = None
            yield CODE, line
        elif marker and not (marker[1][0] == "`" and "`" in marker[2]):
            fence = marker[1]
            yield CODE, line
        elif line.lstrip(" ").startswith("#") and (heading := _HEADING.match(line)):
            yield len(heading[1]), _CLOSING_HASHES.sub("", heading[2] or "").strip()
        else:
            yield BODY, line.rstrip()
