"""`dagster-platform demo` end to end with a tiny base model: a private broker, the simulator,
every asset, the seed questions, feedback (a correction with contact details, one for an
unknown interaction), the loop and the questions again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest
import yaml

from dagster_platform.cli.demo import MARKER, SUMMARY_FILE, Demo, DemoError
from tests.support.state import live_settings
from tests.support.tiny_models import TINY_RECIPE, build_tiny_llm


@pytest.mark.slow
@pytest.mark.models
def test_demo_runs_the_whole_loop(state_dir: Path, tmp_path: Path, monkeypatch) -> None:
    live_settings(state_dir)
    monkeypatch.setenv("BASE_MODEL", str(build_tiny_llm(tmp_path / "tiny")))
    recipe, gate = tmp_path / "recipe.yaml", tmp_path / "gate.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE), encoding="utf-8")
    gate.write_text(
        yaml.safe_dump(
            {
                "primary": {"metric": "eval_loss", "direction": "lower", "margin": 0.0},
                "evaluation": {"max_eval_examples": 2, "max_new_tokens": 4, "agent_cases": 0},
                "min_examples": 10,
            }
        ),
        encoding="utf-8",
    )
    ours = (
        "DAGSTER_PLATFORM_STATE",
        "KAFKA_BOOTSTRAP_SERVERS",
        "DAGSTER_HOME",
        "MLFLOW_TRACKING_URI",
    )
    before_env = {key: os.environ.get(key) for key in ours}
    target = tmp_path / "demo"
    lines: list[str] = []

    report = Demo(target, ticks=12, recipe=recipe, gate=gate, echo=lines.append).run()

    assert {key: os.environ.get(key) for key in ours} == before_env  # nothing leaks out
    assert [t.route for t in report.before] == ["infra", "data", "guide", "data", "infra"]
    assert len(report.after) == 5
    assert report.feedback == {"up": 3, "corrections": 2, "unknown_interaction": 1}
    loop = report.loop
    assert loop["success"], (loop, report.steps)
    # each correction teaches the answer and, with the facts it was written from, the headline
    assert loop["dataset_counts"]["source"]["correction"] == 4
    assert loop["dataset_counts"]["source"]["teacher"] > 0
    assert loop["scrubbed"] == {"email": 2, "phone": 2}
    assert loop["action"] in ("promoted", "refused") and loop["reasons"]
    assert set(report.steps) >= {"simulate", "materialize platform", "fine-tune loop"}
    assert json.loads((target / SUMMARY_FILE).read_text())["loop"]["action"] == loop["action"]
    assert "before → after" in report.text()

    with duckdb.connect(str(target / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM dead_letter_events WHERE reason = 'unknown_interaction'"
        ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM feedback_events").fetchone() == (5,)
        assert conn.execute("SELECT count(*) FROM host_metrics").fetchone()[0] > 0
        (reports,) = conn.execute("SELECT count(*) FROM promotions").fetchone()
        assert reports == 1
    assert (target / MARKER).is_file()


def test_demo_refuses_a_folder_it_did_not_make(state_dir: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("not the demo's")
    with pytest.raises(DemoError, match="not a demo state folder"):
        Demo(precious, echo=lambda _: None).run()
    assert (precious / "data.txt").read_text() == "not the demo's"


@pytest.mark.parametrize("option", ["--gate", "--recipe"])
def test_a_wrong_gate_or_recipe_file_stops_the_demo_at_once(
    state_dir: Path, tmp_path: Path, option: str
) -> None:
    from typer.testing import CliRunner

    from dagster_platform.cli import app

    broken = tmp_path / "broken.yaml"
    broken.write_text("- not a mapping\n", encoding="utf-8")
    target = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--state", str(target), option, str(broken)])
    assert result.exit_code == 1
    assert str(broken) in result.stderr
    assert not target.exists()  # refused before anything was prepared
