"""`dagster-platform demo`: the whole loop, headless, on a fresh state folder.

A private embedded broker, the simulator with a CPU spike, every asset materialized through
Dagster (in process, recorded in the demo's own instance so `dagster dev` can show the runs
afterwards), the seed-004 questions asked, feedback given (ratings, corrections, one with
personal data, one for an unknown interaction), the fine-tune loop, then the same questions
again and what changed. Each step is timed; the summary is printed and kept as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dagster_platform.cli.common import JsonOption, fail
from dagster_platform.lib.logs import get_logger
from dagster_platform.settings import Settings, get_settings

log = get_logger(__name__)

MARKER = ".dagster-platform-demo"
SUMMARY_FILE = "demo_summary.json"

# What an operator would write: a correction of the guide answer (with contact details that
# must not reach the training data) and of the utilisation answer.
CORRECTIONS = {
    3: "먼저 yarn top 과 큐 상태로 클러스터 메모리/vCore 사용률을 확인하고, 자원을 가장 많이 "
    "쓰는 Spark 잡 상위 5개를 찾습니다. 종료나 큐 이동은 승인 후에만 진행하고, 조치 후 "
    "가동율을 다시 확인합니다 (rb-cluster-high-utilization-response). 문의: 010-2345-6789, "
    "oncall@example.com",
    5: "조치 후 etl-prod 가동율을 다시 확인해 85 % 아래로 내려왔는지 보고, 그렇지 않으면 "
    "다음 상위 잡을 검토합니다.",
}


class DemoError(RuntimeError):
    """The demo could not run (a state folder that is not the demo's, a failed step)."""


@dataclass
class Turn:
    question: str
    route: str | None
    status: str
    served: str | None
    interaction_id: str
    answer: str
    headline: str = ""
    headline_source: str = "composed"


@dataclass
class DemoReport:
    state_dir: str
    steps: dict[str, float] = field(default_factory=dict)
    before: list[Turn] = field(default_factory=list)
    after: list[Turn] = field(default_factory=list)
    feedback: dict[str, Any] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return round(sum(self.steps.values()), 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_s": self.wall_s}

    def changes(self) -> list[str]:
        lines = []
        for old, new in zip(self.before, self.after, strict=True):
            same = "same answer" if old.answer == new.answer else "answer changed"
            lines.append(
                f"{new.question}\n    route {old.route} → {new.route}; served {old.served} → "
                f"{new.served}; headline {old.headline_source} → {new.headline_source}; {same}"
                f"\n    {new.headline}"
            )
        return lines

    def text(self) -> str:
        loop = self.loop
        lines = [
            f"demo state: {self.state_dir}",
            f"wall time: {self.wall_s:.0f} s ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in self.steps.items())
            + ")",
            f"feedback: {self.feedback}",
            f"dataset {loop.get('dataset_version')}: {loop.get('dataset_counts')}, "
            f"scrubbed {loop.get('scrubbed')}",
            f"adapter v{loop.get('challenger_version')}: loss {loop.get('train_loss')}, "
            f"{loop.get('tokens_per_s')} tokens/s",
            f"gate: {loop.get('action')} — " + "; ".join(loop.get("reasons", [])),
            "headline pass rate on held-out questions (the model's headline shown and right): "
            + (
                ", ".join(f"{k} {v:.2f}" for k, v in loop["headline_pass_rate"].items())
                if loop.get("headline_pass_rate")
                else "not measured"
            ),
            "",
            str(loop.get("evaluation", "")),
            "",
            "the seed questions, before → after:",
            *self.changes(),
        ]
        return "\n".join(lines)


def prepare_state(state_dir: Path, models_from: Path) -> None:
    """A fresh state folder: only ever deletes a folder an earlier demo made."""
    if state_dir.exists():
        if not (state_dir / MARKER).is_file() and any(state_dir.iterdir()):
            raise DemoError(
                f"{state_dir} exists and is not a demo state folder; choose another --state"
            )
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    (state_dir / MARKER).write_text("made by dagster-platform demo\n", encoding="utf-8")
    from dagster_platform.lib.packaged_models import prepare_all

    if models_from.is_dir() and models_from.resolve() != (state_dir / "models").resolve():
        prepare_all(models_from)  # idempotent: checks the weights, converts only if needed
        (state_dir / "models").symlink_to(models_from.resolve(), target_is_directory=True)
    else:
        prepare_all(state_dir / "models")


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def seed_questions(data_dir: Path) -> list[str]:
    from dagster_platform.agents.evaluation import load_cases, scenario_cases

    return [c.question for c in scenario_cases(load_cases(data_dir / "golden_questions.jsonl"))]


class Demo:
    def __init__(
        self,
        state_dir: Path,
        *,
        ticks: int = 60,
        recipe: Path | None = None,
        gate: Path | None = None,
        echo: Callable[[str], None] = print,
    ):
        self.state_dir = state_dir.resolve()
        self.ticks = ticks
        self.recipe = recipe
        self.gate = gate
        self.echo = echo
        self.report = DemoReport(str(self.state_dir))

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        self.echo(f"== {name}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.report.steps[name] = round(time.perf_counter() - started, 1)

    def run(self) -> DemoReport:
        from dagster_platform.deploy.instance import write_instance_config
        from dagster_platform.kafka.broker import EmbeddedBroker, free_port

        self._check_files()
        origin = get_settings()
        with self._step("fresh state"):
            prepare_state(self.state_dir, origin.models_dir)
        broker = EmbeddedBroker(free_port(), self.state_dir / "broker")
        env = {
            "DAGSTER_PLATFORM_STATE": str(self.state_dir),
            "DAGSTER_PLATFORM_DATA": str(origin.data_dir),
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.state_dir / 'mlflow.db'}",
            "GX_ANALYTICS_ENABLED": "false",
            "ANONYMIZED_TELEMETRY": "False",
        }
        with _environment(env):
            settings = get_settings()
            with _environment({"DAGSTER_HOME": str(write_instance_config(settings))}):
                broker.start()
                try:
                    self._loop(settings)
                finally:
                    broker.stop()
        (self.state_dir / SUMMARY_FILE).write_text(
            json.dumps(self.report.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8"
        )
        return self.report

    def _check_files(self) -> None:
        """A wrong --recipe or --gate fails now, naming the file, not ten minutes in."""
        from dagster_platform.finetune.gate import GateConfig, GateConfigError
        from dagster_platform.finetune.recipe import Recipe, RecipeError

        try:
            if self.recipe is not None:
                Recipe.load(self.recipe)
            if self.gate is not None:
                GateConfig.load(self.gate)
        except (RecipeError, GateConfigError) as exc:
            raise DemoError(str(exc)) from None

    def _loop(self, settings: Settings) -> None:
        import dagster as dg

        from dagster_platform.kafka.publisher import run_producer
        from dagster_platform.kafka.simulator import ClusterSimulator
        from dagster_platform.kafka.topics import ensure_topics

        instance = dg.DagsterInstance.get()
        with self._step("simulate"):
            ensure_topics(settings.bootstrap_servers)
            sent = run_producer(
                settings.bootstrap_servers,
                ClusterSimulator(settings.data_dir),
                rate=0,
                ticks=self.ticks,
                incident="cpu-spike",
            )
            self.echo(f"   {sent.to_dict()}")
        with self._step("materialize platform"):
            _materialize(instance, dg.AssetSelection.groups("ingestion", "ontology", "knowledge"))
            self._incident_reports(instance, settings)
            _materialize(
                instance,
                dg.AssetSelection.assets("agent_benchmark"),
                {"ops": {"agent_benchmark": {"config": {"questions": 5}}}},
            )
        questions = seed_questions(settings.data_dir)
        with self._step("ask before"):
            self.report.before = self._ask(settings, questions, "demo-before")
        with self._step("feedback"):
            self._feedback(settings)
            _materialize(instance, dg.AssetSelection.assets("feedback_events"))
        with self._step("fine-tune loop"):
            self.report.loop = self._finetune(instance)
        with self._step("ask after"):
            self.report.after = self._ask(settings, questions, "demo-after")

    def _incident_reports(self, instance: Any, settings: Settings) -> None:
        import dagster as dg

        from dagster_platform.definitions import defs
        from dagster_platform.lib.warehouse import open_warehouse, table_exists

        with open_warehouse(settings.warehouse_path, read_only=True) as conn:
            alerts = (
                [
                    r[0]
                    for r in conn.execute("SELECT DISTINCT alert_id FROM alert_events").fetchall()
                ]
                if table_exists(conn, "alert_events")
                else []
            )
        partitions = defs().resolve_assets_def("incident_reports").partitions_def
        instance.add_dynamic_partitions(partitions.name, alerts)
        for alert in alerts:
            _materialize(instance, dg.AssetSelection.assets("incident_reports"), partition=alert)
        self.echo(f"   incident reports: {len(alerts)}")

    def _ask(self, settings: Settings, questions: list[str], session: str) -> list[Turn]:
        from dagster_platform.agents.assistant import Assistant

        assistant = Assistant.open(settings)
        turns = []
        try:
            for question in questions:
                answer = assistant.ask(question, session)
                record = answer.interaction
                served = record.model if record.adapter is None else record.adapter
                turns.append(
                    Turn(
                        question,
                        record.route,
                        record.status,
                        served,
                        record.interaction_id,
                        answer.text,
                        record.headline or "",
                        record.headline_source or "composed",
                    )
                )
                self.echo(f"   [{record.route}] {question} ({served})")
        finally:
            assistant.close()
        return turns

    def _feedback(self, settings: Settings) -> None:
        from dagster_platform.finetune.feedback import publish_feedback

        given = {"up": 0, "corrections": 0, "unknown_interaction": 0}
        for step, turn in enumerate(self.report.before, start=1):
            correction = CORRECTIONS.get(step)
            publish_feedback(
                settings.bootstrap_servers,
                turn.interaction_id,
                "down" if correction else "up",
                correction=correction,
                user_id="demo-operator",
            )
            given["corrections" if correction else "up"] += 1
        publish_feedback(settings.bootstrap_servers, "ia-does-not-exist", "up", user_id="demo")
        given["unknown_interaction"] += 1
        self.report.feedback = given
        self.echo(f"   {given}")

    def _finetune(self, instance: Any) -> dict[str, Any]:
        import dagster as dg

        paths = {"recipe_path": self.recipe, "gate_path": self.gate}
        config = {key: str(path) for key, path in paths.items() if path is not None}
        run_config = {"resources": {"finetune": {"config": config}}} if config else {}
        result = _materialize(
            instance, dg.AssetSelection.groups("finetune"), run_config, raise_on_error=False
        )
        loop: dict[str, Any] = {"run_id": result.run_id, "success": result.success}
        for event in result.get_asset_materialization_events():
            name = event.asset_key.to_user_string()
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            if name == "sft_dataset":
                loop.update(
                    dataset_version=meta["version"],
                    dataset_counts=meta["counts"],
                    scrubbed=meta["scrubbed"],
                )
            elif name == "lora_adapter":
                loop.update(
                    challenger_version=meta["registered_version"],
                    train_loss=round(float(meta["train_loss"]), 4),
                    tokens_per_s=round(float(meta["tokens_per_s"]), 1),
                )
            elif name == "adapter_evaluation":
                loop["evaluation"] = meta["report"]
                loop["headline_pass_rate"] = meta.get("headline_pass_rate")
            elif name == "promoted_adapter":
                loop.update(
                    action=meta["action"],
                    reasons=[line.removeprefix("- ") for line in meta["reasons"].splitlines()],
                    champion_after=meta["champion_after"],
                )
        if not result.success:
            failure = next(
                (e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None
            )
            loop["action"] = "loop failed"
            loop["reasons"] = [failure.message if failure else "see the run's logs"]
        return loop


def _materialize(
    instance: Any,
    selection: Any,
    run_config: dict | None = None,
    partition: str | None = None,
    raise_on_error: bool = True,
) -> Any:
    import dagster as dg

    from dagster_platform.definitions import defs

    location = defs()  # built in the demo's environment, as Dagster would build it
    result = dg.materialize(
        list(location.assets or []),
        selection=selection,
        resources=location.resources,
        instance=instance,
        run_config=run_config or {},
        partition_key=partition,
        raise_on_error=raise_on_error,
        tags={"dagster-platform/demo": "1"},
    )
    if raise_on_error and not result.success:
        raise DemoError(f"run {result.run_id} failed")
    return result


def demo(
    state: Annotated[
        Path | None,
        typer.Option(help="A fresh state folder for the demo (default: demo/ in the state)."),
    ] = None,
    ticks: Annotated[int, typer.Option(help="Simulator ticks (10 simulated s each).")] = 60,
    recipe: Annotated[
        Path | None, typer.Option(help="Training recipe YAML (default data/finetune/recipe.yaml).")
    ] = None,
    gate: Annotated[
        Path | None, typer.Option(help="Promotion gate YAML (default data/finetune/gate.yaml).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The whole loop headless on a fresh state: broker, simulator, every asset, the seed
    questions, feedback, fine-tune, evaluation, the gate, the questions again, what changed."""
    target = state or get_settings().state_dir / "demo"
    try:
        report = Demo(
            target, ticks=ticks, recipe=recipe, gate=gate, echo=lambda m: typer.echo(m, err=True)
        ).run()
    except DemoError as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report.to_dict(), ensure_ascii=False) if as_json else report.text())
