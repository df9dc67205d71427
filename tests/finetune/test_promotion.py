"""Promotions and rollbacks against a real MLflow registry, a real DuckDB warehouse and the
LLM service serving tiny adapters; and the gate refusing an adapter trained on shuffled
answers (the packaged model, trained for real)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from dagster_platform.cli.adapters import adapters_app
from dagster_platform.finetune.evaluation import (
    encode_example,
    evaluate_candidates,
    registry_candidates,
)
from dagster_platform.finetune.gate import (
    DEFAULT_GATE,
    CandidateMetrics,
    Decision,
    GateConfig,
    decide,
)
from dagster_platform.finetune.promotion import (
    ConnectionFactory,
    RollbackError,
    history,
    promote,
    rollback,
)
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.llm.client import ResiliencePolicy
from dagster_platform.llm.registry import AdapterRegistry, NoSuchVersion
from dagster_platform.llm.service import LLMConfig, LLMService, get_service
from dagster_platform.settings import get_settings
from tests.support.registry import log_adapter_run
from tests.support.tiny_models import PREPARED_LLM, build_tiny_adapter, build_tiny_llm

GATE = GateConfig.load(DEFAULT_GATE)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-promotion")
    base = build_tiny_llm(root / "base")
    good = {f"a{seed}": build_tiny_adapter(base, root / f"a{seed}", seed=seed) for seed in (1, 2)}
    broken = shutil.copytree(good["a1"], root / "broken")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return {"base": base, **good, "broken": broken}


@dataclass
class World:
    """A registry, the service that serves its champion, and the warehouse of the history."""

    root: Path
    registry: AdapterRegistry
    service: LLMService
    warehouse: Path

    def connect(self) -> ConnectionFactory:
        return lambda: open_warehouse(self.warehouse)

    def register(self, folder: Path) -> str:
        run_id = log_adapter_run(self.registry.tracking_uri, self.root, folder)
        return self.registry.register(run_id, tags={"dataset_version": "feedc0ffee000001"}).version

    def served(self) -> str | None:
        adapter = self.service.client.served.adapter
        return None if adapter is None else adapter.version

    def champion(self) -> str | None:
        found = self.registry.by_alias("champion")
        return None if found is None else found.version

    def rows(self) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(
                "SELECT action, challenger_version, champion_before, champion_after, actor "
                "FROM promotions ORDER BY decided_at"
            ).fetchall()


def _world(root: Path, base: Path, model: str) -> World:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = LLMConfig(
        backend="transformers",
        base_model=str(base),
        registered_model=model,
        tracking_uri=uri,
        adapters_dir=root / "adapters",
        policy=ResiliencePolicy(retries=0),
        check_interval_s=3600.0,
    )
    return World(root, AdapterRegistry(uri, model), get_service(config), root / "warehouse.duckdb")


def _decision(promote_it: bool, version: str) -> Decision:
    challenger = CandidateMetrics(
        "challenger", version, {"eval_loss": 1.0 if promote_it else 2.97, "rouge_l": 0.5}
    )
    base = CandidateMetrics("base", None, {"eval_loss": 3.0, "rouge_l": 0.4})
    return decide(challenger, base, GATE)


def test_a_promotion_serves_at_once_and_a_refusal_changes_nothing(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    world = _world(tmp_path, tiny["base"], "ops-promote")
    v1 = world.register(tiny["a1"])
    metrics = {"challenger": {"eval_loss": 1.0}, "base": {"eval_loss": 3.0}}
    done = promote(
        world.registry,
        _decision(True, v1),
        v1,
        world.service,
        world.connect(),
        "dagster",
        run_id="run-1",
        metrics=metrics,
    )
    assert (done.action, done.champion_before, done.champion_after) == ("promoted", None, "1")
    assert world.champion() == "1" and world.served() == "1"
    assert done.served.endswith("ops-promote-v1 v1")
    assert world.registry.get(v1).tags["gate"] == "promoted"
    assert world.registry.get(v1).metrics == {"eval_loss": 1.0}

    v2 = world.register(tiny["a2"])
    refused = promote(world.registry, _decision(False, v2), v2, world.service, world.connect(), "d")
    assert refused.action == "refused" and refused.champion_after == "1"
    assert "is below the margin" in refused.reasons[0]
    assert world.champion() == "1" and world.served() == "1"
    assert world.rows() == [
        ("promoted", "1", None, "1", "dagster"),
        ("refused", "2", "1", "1", "d"),
    ]
    with open_warehouse(world.warehouse, read_only=True) as conn:
        latest, first = history(conn)
    assert latest.action == "refused" and latest.reasons == refused.reasons
    assert first.metrics == metrics and first.run_id == "run-1"
    with pytest.raises(NoSuchVersion):
        promote(world.registry, _decision(True, "9"), "9", world.service, world.connect(), "d")


def test_an_adapter_that_fails_to_load_is_rolled_back(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    world = _world(tmp_path, tiny["base"], "ops-broken")
    v1 = world.register(tiny["a1"])
    promote(world.registry, _decision(True, v1), v1, world.service, world.connect(), "dagster")
    v2 = world.register(tiny["broken"])
    outcome = promote(
        world.registry, _decision(True, v2), v2, world.service, world.connect(), "dagster"
    )
    assert outcome.action == "rolled_back" and not outcome.ok
    assert outcome.champion_before == "1" and outcome.champion_after == "1"
    assert outcome.reasons[-1].startswith("v2 did not serve: adapter ops-broken-v2 failed")
    assert "champion restored, serving" in outcome.reasons[-1]
    assert world.champion() == "1" and world.served() == "1"  # the previous champion serves
    assert world.rows()[-1] == ("rolled_back", "2", "1", "1", "dagster")
    assert world.registry.get(v2).tags["gate"] == "rolled_back"


def test_a_first_adapter_that_fails_to_load_leaves_the_base_model(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    world = _world(tmp_path, tiny["base"], "ops-first-broken")
    v1 = world.register(tiny["broken"])
    outcome = promote(
        world.registry, _decision(True, v1), v1, world.service, world.connect(), "dagster"
    )
    assert outcome.action == "rolled_back" and outcome.champion_after is None
    assert world.champion() is None and world.served() is None
    assert world.service.warning is None  # the base model serves, as the registry says


def test_rollback_restores_the_previous_champion(tiny: dict[str, Path], tmp_path: Path) -> None:
    world = _world(tmp_path, tiny["base"], "ops-rollback")
    with pytest.raises(RollbackError, match="no champion to roll back"):
        rollback(world.registry, world.service, world.connect(), "alice")
    v1, v2 = world.register(tiny["a1"]), world.register(tiny["a2"])
    world.registry.set_alias("champion", v1)  # set by hand: no history
    with pytest.raises(RollbackError, match="--to VERSION"):
        rollback(world.registry, world.service, world.connect(), "alice")
    promote(world.registry, _decision(True, v2), v2, world.service, world.connect(), "dagster")
    assert world.served() == "2"

    back = rollback(world.registry, world.service, world.connect(), "alice")
    assert (back.action, back.champion_before, back.champion_after) == ("rollback", "2", "1")
    assert back.reasons == ["rollback from v2 to v1 by alice"]
    assert world.champion() == "1" and world.served() == "1"
    with pytest.raises(RollbackError, match="v1 is the champion already"):
        rollback(world.registry, world.service, world.connect(), "alice", to_version="1")
    with pytest.raises(NoSuchVersion):
        rollback(world.registry, world.service, world.connect(), "alice", to_version="8")

    v3 = world.register(tiny["broken"])
    failed = rollback(world.registry, world.service, world.connect(), "alice", to_version=v3)
    assert failed.action == "rolled_back" and failed.champion_after == "1"
    assert world.champion() == "1" and world.served() == "1"
    assert [row[0] for row in world.rows()] == ["promoted", "rollback", "rolled_back"]


def test_the_adapters_cli_lists_and_rolls_back(
    tiny: dict[str, Path], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = state_dir.parent
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("BASE_MODEL", str(tiny["base"]))
    monkeypatch.setenv("REGISTERED_MODEL", "ops-cli")
    settings = get_settings()
    state_dir.mkdir()
    runner = CliRunner()
    empty = runner.invoke(adapters_app, ["list"])
    assert empty.exit_code == 0 and "no adapter versions of ops-cli yet" in empty.output
    refused = runner.invoke(adapters_app, ["rollback", "--user", "alice"])
    assert refused.exit_code == 1 and "no champion to roll back" in refused.output

    world = World(
        root,
        AdapterRegistry(settings.resolved_mlflow_tracking_uri, "ops-cli"),
        get_service(LLMConfig.from_settings(settings)),  # the service the command uses
        settings.warehouse_path,
    )
    for folder in (tiny["a1"], tiny["a2"]):
        version = world.register(folder)
        metrics = {"challenger": {"eval_loss": 1.0 / int(version)}}
        decision = _decision(True, version)
        connect = world.connect()
        promote(world.registry, decision, version, world.service, connect, "x", metrics=metrics)
    listed = runner.invoke(adapters_app, ["list"]).output.splitlines()
    assert listed[0].startswith("v2    challenger,champion ")
    assert "dataset feedc0ffee000001  gate promoted  eval_loss=0.5" in listed[0]
    assert listed[1].startswith("v1    - ") and listed[1].endswith("eval_loss=1")
    as_json = json.loads(runner.invoke(adapters_app, ["list", "--json"]).output)
    assert [(v["version"], v["aliases"]) for v in as_json] == [
        ("2", ["challenger", "champion"]),
        ("1", []),
    ]

    done = runner.invoke(adapters_app, ["rollback", "--user", "alice"])
    assert done.exit_code == 0, done.output
    assert "champion is now v1; serving base + ops-cli-v1 v1" in done.output
    assert world.champion() == "1" and world.served() == "1"
    assert world.rows()[-1] == ("rollback", "1", "2", "1", "alice")
    again = runner.invoke(adapters_app, ["rollback", "--to", "2", "--user", "bob"])
    assert again.exit_code == 0 and world.served() == "2"
    missing = runner.invoke(adapters_app, ["rollback", "--to", "9"])
    assert missing.exit_code == 1 and "has no version '9'" in missing.output


# --- a deliberately worse challenger, trained for real ----------------------------------------

CLUSTERS = [("etl-prod", 91), ("ml-train", 47), ("adhoc-dev", 12), ("batch-fin", 68)]
PHRASES = [
    "What is the utilisation of cluster {c}?",
    "How busy is {c} right now?",
    "Tell me the load of {c}.",
]


def _examples() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and eval rows in the contract's shape: each cluster asked three ways, one way of
    each held out (a different one per cluster)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PREPARED_LLM)
    train, held_out = [], []
    for i, (cluster, load) in enumerate(CLUSTERS):
        for j, phrase in enumerate(PHRASES):
            messages = [
                {"role": "system", "content": "Ops assistant."},
                {"role": "user", "content": phrase.format(c=cluster)},
            ]
            prompt = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            row = {"prompt": prompt, "completion": f"{cluster} is at {load}% utilisation."}
            (held_out if j == i % len(PHRASES) else train).append(row)
    return train, held_out


def _train_lora(rows: list[dict[str, str]], target: Path) -> Path:
    """One epoch of peft LoRA (q/v) on the completion tokens, one example per step: enough
    for the packaged model to learn which load each cluster has (or, shuffled, a wrong one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(PREPARED_LLM)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(PREPARED_LLM, dtype=torch.float32),
        LoraConfig(
            task_type="CAUSAL_LM",
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
        ),
    )
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for row in rows:
        ids, prompt_length = encode_example(tokenizer, row["prompt"], row["completion"], 128)
        labels = [-100] * prompt_length + ids[prompt_length:]
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.save_pretrained(target)
    return target


@pytest.mark.slow
@pytest.mark.models
def test_the_gate_refuses_an_adapter_trained_on_shuffled_answers(tmp_path: Path) -> None:
    train, held_out = _examples()
    # Rotating by two moves every answer to the next cluster's question (two per cluster).
    shuffled = [
        {**row, "completion": train[(k + 2) % len(train)]["completion"]}
        for k, row in enumerate(train)
    ]
    assert all(a["completion"] != b["completion"] for a, b in zip(train, shuffled, strict=True))
    real_adapter = _train_lora(train, tmp_path / "real")
    shuffled_adapter = _train_lora(shuffled, tmp_path / "shuffled")

    world = _world(tmp_path, PREPARED_LLM, "ops-shuffled")
    config = GATE.model_copy(
        update={
            "evaluation": GATE.evaluation.model_copy(
                update={"max_eval_examples": 2, "max_new_tokens": 10, "agent_cases": 0}
            )
        }
    )

    def evaluate_and_decide() -> tuple[str, Decision, dict[str, dict[str, float]]]:
        candidates = registry_candidates(world.registry, tmp_path / "eval-adapters")
        report = evaluate_candidates(
            candidates, held_out, base_model_path=PREPARED_LLM, config=config
        )
        challenger = report.get("challenger")
        decision = decide(challenger, report.incumbent(), config)
        metrics = {c.name: c.metrics for c in report.candidates}
        return challenger.version, decision, metrics

    world.register(real_adapter)
    version, decision, metrics = evaluate_and_decide()
    assert decision.promote, decision.reasons  # the real answers beat the base model
    first = promote(world.registry, decision, version, world.service, world.connect(), "gate")
    assert first.action == "promoted" and world.served() == "1"

    world.register(shuffled_adapter)
    version, decision, metrics = evaluate_and_decide()
    assert decision.incumbent == "champion v1"
    assert metrics["challenger"]["eval_loss"] > metrics["champion"]["eval_loss"] * 1.1
    second = promote(
        world.registry, decision, version, world.service, world.connect(), "gate", metrics=metrics
    )
    assert second.action == "refused" and world.champion() == "1" and world.served() == "1"
    with open_warehouse(world.warehouse, read_only=True) as conn:
        recorded = history(conn, limit=1)[0]
    assert recorded.challenger_version == "2"
    loss = metrics["challenger"]["eval_loss"]
    champion_loss = metrics["champion"]["eval_loss"]
    assert recorded.reasons[0].startswith(
        f"eval_loss {loss:.4f} (challenger v2) vs {champion_loss:.4f} (champion v1): improvement -"
    )
    assert recorded.metrics == metrics
