"""The console's fixtures: a frozen sample state (plus a runbook carrying HTML) with console
passwords for the roles file's users, a private copy per test, and one Chromium per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.console.users import UserStore, users_file
from dagster_platform.kafka.broker import EmbeddedBroker
from dagster_platform.kafka.topics import PLATFORM_TOPICS, ensure_topics
from dagster_platform.ontology.roles import load_roles
from dagster_platform.settings import Settings
from tests.support.browser import CHROMIUM, launch
from tests.support.state import ROLES_FILE, SAMPLE_DIR, live_settings

PASSWORDS = {user: f"{user}-console-pw-1" for user in ("alice", "bob", "carol", "dave")}
HTML_RUNBOOK = "rb-zz-widget-html-notes"
SCRIPT = "<script>window.__pwned = 'script'</script>"
IMAGE = "<img src=x onerror=\"window.__pwned = 'img'\">"


@pytest.fixture(scope="session")
def console_template(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Built once: the sample, a runbook whose text carries a script and an image handler, the
    frozen warehouse (BM25 only: no embeddings to build) and everyone's password."""
    root = tmp_path_factory.mktemp("console")
    data = root / "data"
    shutil.copytree(SAMPLE_DIR, data)
    (data / "runbooks" / f"{HTML_RUNBOOK}.md").write_text(
        f"---\nid: {HTML_RUNBOOK}\ntitle: Zorblax widget notes\nlanguage: en\n---\n"
        "# Zorblax widget notes\n\n## Restarting the zorblax widget\n\n"
        f"Restart the zorblax widget from the admin page. {SCRIPT} {IMAGE} Then check it.\n",
        encoding="utf-8",
    )
    frozen = build_frozen_state(live_settings(root / "live", data), root / "frozen", embed=False)
    store = UserStore(users_file(frozen.state_dir), rounds=4)
    roles = load_roles(ROLES_FILE)
    for user, password in PASSWORDS.items():
        store.set_password(roles, user, password)
    return frozen


@pytest.fixture
def console_settings(
    console_template: Settings, tmp_path: Path, kafka_broker: EmbeddedBroker
) -> Settings:
    """A private copy of the frozen state on the session broker."""
    target = tmp_path / "state"
    shutil.copytree(console_template.state_dir, target, symlinks=True)
    ensure_topics(kafka_broker.bootstrap_servers, PLATFORM_TOPICS)
    return console_template.model_copy(
        update={"state_dir": target, "kafka_bootstrap_servers": kafka_broker.bootstrap_servers}
    )


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()
