"""Every command the README, the docs and the assistant tell a person to run exists with those
options: each is parsed against the CLI itself (nothing runs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dagster_platform.agents.tools.data import approve_command
from dagster_platform.cli import app

ROOT = Path(__file__).resolve().parents[2]
# a command starts a code line or an inline code span (`kubectl -n dagster-platform` does not)
_INLINE = re.compile(r"`(dagster-platform [^`]+)`")
_LINE = re.compile(r"^\s*(?:\$ )?(dagster-platform .*)$")


def _documented() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        fenced = False
        for number, line in enumerate(lines):
            if line.strip().startswith("```"):
                fenced = not fenced
                continue
            if fenced and (match := _LINE.match(line)):
                command = match.group(1)
                following = number + 1
                while command.rstrip().endswith("\\") and following < len(lines):
                    command = command.rstrip()[:-1] + " " + lines[following].strip()
                    following += 1
                found.append((f"{path.name}:{number + 1}", command))
            elif not fenced:
                found += [(f"{path.name}:{number + 1}", m) for m in _INLINE.findall(line)]
    return found


def _alternatives(command: str) -> list[str]:
    """A synopsis's `a | b` as commands: inside `[ ]` the first value is kept ("rules|llm"),
    between subcommands each becomes a command of the same group ("list | rollback")."""
    command = re.sub(r"\s#\s.*$", "", command).replace("\\|", "|")
    depth, parts, current = 0, [], ""
    for char in command:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    parts = [re.sub(r"\|[^\s\]]*", "", p) for p in parts]  # first value inside brackets
    group = " ".join(parts[0].split()[:2])
    return [parts[0], *(f"{group} {p.strip()}" for p in parts[1:])]


def _argv(command: str) -> list[str]:
    """The command as argv; `[ ]` around optional parts is synopsis, not input."""
    argv = shlex.split(command.replace("[", " ").replace("]", " "))
    assert argv[0] == "dagster-platform"
    return argv[1:]


def _parse(argv: list[str]) -> None:
    """Parse the line with `--help` after it: the CLI resolves each command and refuses an
    unknown command or option, then prints help instead of running anything."""
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"dagster-platform {' '.join(argv)}: {result.output}"


DOCUMENTED = _documented()


def test_the_docs_name_commands() -> None:
    assert len(DOCUMENTED) > 20


@pytest.mark.parametrize(("where", "command"), DOCUMENTED, ids=[w for w, _ in DOCUMENTED])
def test_each_documented_command_parses(where: str, command: str) -> None:
    for alternative in _alternatives(command):
        _parse(_argv(alternative))


def test_the_assistants_hint_parses() -> None:
    """The approval command the answers and the incident reports print."""
    _parse(_argv(approve_command("act-0123456789ab")))


def test_a_wrong_option_is_caught() -> None:
    with pytest.raises(AssertionError, match="No such option"):
        _parse(_argv("dagster-platform actions approve ACTION_ID --user USER"))
    with pytest.raises(AssertionError, match="No such command"):
        _parse(_argv("dagster-platform agents ask Q"))
