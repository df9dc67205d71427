"""Adapter evaluation on tiny models: loss, perplexity, ROUGE-L and the agent subset per
candidate, the report (table, chart, MLflow run), and corrupted adapters marked failed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import duckdb
import pytest

from dagster_platform.agents.assistant import Assistant
from dagster_platform.agents.evaluation import load_cases
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.finetune.evaluation import (
    EXPERIMENT,
    Candidate,
    EvaluationError,
    EvaluationReport,
    completion_loss,
    encode_example,
    evaluate_candidates,
    log_evaluation,
    registry_candidates,
    rouge_l,
)
from dagster_platform.finetune.gate import DEFAULT_GATE, GateConfig, decide
from dagster_platform.llm.base import AdapterInfo
from dagster_platform.llm.client import LLMClient
from dagster_platform.llm.registry import AdapterRegistry
from dagster_platform.llm.service import LLMConfig, PinnedLLMService
from dagster_platform.llm.transformers_backend import TransformersBackend, shared_backend
from dagster_platform.settings import Settings
from tests.support.registry import log_adapter_run
from tests.support.state import SAMPLE_DIR, live_settings
from tests.support.tiny_models import build_tiny_adapter, build_tiny_llm

PNG = b"\x89PNG\r\n\x1a\n"
QA = [
    ("How busy is etl-prod?", "etl-prod runs at 90.6% utilisation."),
    ("현재 클러스터 가동율 알려줘?", "etl-prod 클러스터 가동율은 90.6%입니다."),
    ("Which Spark job uses the most memory?", "application_0488 uses the most memory."),
    ("What do I do when HDFS is in safe mode?", "Check the namenode log, then leave safemode."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-evaluation")
    base = build_tiny_llm(root / "base")
    models = {"base": base}
    for seed in (1, 2):
        models[f"a{seed}"] = build_tiny_adapter(base, root / f"a{seed}", seed=seed)
    truncated = shutil.copytree(models["a1"], root / "truncated")
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    garbage = shutil.copytree(models["a1"], root / "garbage")
    (garbage / "adapter_config.json").write_text("{this is not json")
    return {**models, "truncated": truncated, "garbage": garbage}


@pytest.fixture(scope="module")
def rows(tiny: dict[str, Path]) -> list[dict[str, str]]:
    """Eval rows in the dataset contract's shape (prompt formatted by the chat template)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    found = []
    for question, answer in QA:
        messages = [
            {"role": "system", "content": "You are an operations assistant."},
            {"role": "user", "content": question},
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        found.append({"messages": json.dumps(messages), "prompt": prompt, "completion": answer})
    return found


def _config(**evaluation: int) -> GateConfig:
    shipped = GateConfig.load(DEFAULT_GATE)
    sizes = {"max_eval_examples": 2, "max_new_tokens": 6, "agent_cases": 0, **evaluation}
    return shipped.model_copy(update={"evaluation": shipped.evaluation.model_copy(update=sizes)})


def _adapter(path: Path, name: str) -> AdapterInfo:
    return AdapterInfo(name=name, path=path, version=name[-1])


def test_the_loss_is_the_mean_over_completion_tokens(
    tiny: dict[str, Path], rows: list[dict[str, str]]
) -> None:
    import torch

    backend = TransformersBackend(str(tiny["base"]))
    encoded = [encode_example(backend.tokenizer, r["prompt"], r["completion"], 512) for r in rows]
    ids, prompt_length = encoded[0]
    labels = torch.tensor([[-100] * prompt_length + ids[prompt_length:]])
    with torch.inference_mode():
        expected = backend.torch_model(input_ids=torch.tensor([ids]), labels=labels).loss
    assert completion_loss(backend, None, encoded[:1]) == pytest.approx(float(expected), rel=1e-4)
    assert ids[-1] == backend.tokenizer.eos_token_id  # the eos is learnt, so it is scored


def test_a_long_completion_is_cut_and_one_that_cannot_fit_is_dropped(
    tiny: dict[str, Path], rows: list[dict[str, str]]
) -> None:
    backend = TransformersBackend(str(tiny["base"]))
    tokenizer = backend.tokenizer
    prompt_tokens = len(tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"])
    cut = encode_example(tokenizer, rows[0]["prompt"], "word " * 500, prompt_tokens + 5)
    assert cut is not None and len(cut[0]) == prompt_tokens + 5 and cut[1] == prompt_tokens
    assert encode_example(tokenizer, rows[0]["prompt"], "word", prompt_tokens) is None


def test_rouge_l_scores_korean_text() -> None:
    from rouge_score import rouge_scorer

    reference = "클러스터 가동율은 90.6%입니다"
    right, wrong = "클러스터 가동율 90.6%", "디스크가 가득 찼습니다 90.6%"
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score(reference, right) == default.score(reference, wrong)  # blind to Korean
    assert rouge_l([right], [reference]) == pytest.approx(16 / 19)  # 8 of 11 bigram tokens
    assert rouge_l([wrong], [reference]) < 0.4
    assert rouge_l(["unrelated words"], [reference]) == 0.0


@pytest.mark.models
def test_every_candidate_is_scored_reported_and_logged(
    tiny: dict[str, Path], rows: list[dict[str, str]], tmp_path: Path
) -> None:
    candidates = [
        Candidate("challenger", _adapter(tiny["a1"], "ops-v2"), "2"),
        Candidate("champion", _adapter(tiny["a2"], "ops-v1"), "1"),
        Candidate("base", None),
    ]
    report = evaluate_candidates(candidates, rows, base_model_path=tiny["base"], config=_config())
    assert [c.name for c in report.candidates] == ["challenger", "champion", "base"]
    losses = []
    for candidate in report.candidates:
        assert candidate.error is None
        assert set(candidate.metrics) == {"eval_loss", "perplexity", "rouge_l"}
        metrics = candidate.metrics
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
        assert 0.0 <= metrics["rouge_l"] <= 1.0
        losses.append(metrics["eval_loss"])
    assert len({round(loss, 6) for loss in losses}) == 3  # each adapter changes the model
    assert (report.loss_examples, report.generated_examples, report.agent_cases) == (4, 2, 0)
    assert not any(
        n.startswith("eval-") for n in shared_backend(str(tiny["base"])).loaded_adapters()
    )

    table = report.markdown()
    assert table.startswith(
        "| metric | challenger v2 | champion v1 | base model | Δ vs champion v1 | Δ vs base model |"
    )
    delta = losses[0] - losses[2]
    assert f"| eval_loss ↓ | {losses[0]:.4f} |" in table and f"{delta:+.4f} |" in table
    assert report.chart_png().startswith(PNG)
    assert EvaluationReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_evaluation(report, uri, tmp_path / "mlartifacts")
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.params["challenger_version"] == "2"
    assert run.data.metrics["challenger.eval_loss"] == pytest.approx(losses[0])
    assert run.data.metrics["base.rouge_l"] == report.get("base").metrics["rouge_l"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"evaluation.md", "evaluation.png", "evaluation.json"}
    assert (tmp_path / "mlartifacts" / EXPERIMENT).is_dir()


def test_corrupted_adapters_are_marked_failed_and_never_promoted(
    tiny: dict[str, Path], rows: list[dict[str, str]]
) -> None:
    candidates = [
        Candidate("challenger", _adapter(tiny["truncated"], "ops-v3"), "3"),
        Candidate("champion", _adapter(tiny["garbage"], "ops-v2"), "2"),
        Candidate("base", None),
    ]
    config = _config()
    report = evaluate_candidates(candidates, rows, base_model_path=tiny["base"], config=config)
    challenger, champion, base = report.candidates
    assert challenger.metrics == {} and "did not load" in challenger.error
    assert champion.metrics == {} and "did not load" in champion.error
    assert base.error is None and base.metrics["eval_loss"] > 0
    assert report.incumbent() is base  # the champion could not be scored: the base serves
    decision = decide(challenger, report.incumbent(), config)
    assert not decision.promote
    assert decision.reasons[0].startswith("challenger v3 could not be evaluated: ")
    assert "| eval_loss ↓ | failed | failed |" in report.markdown()
    assert "**challenger v3 failed:**" in report.markdown()
    assert report.chart_png().startswith(PNG)

    good = evaluate_candidates(
        [Candidate("challenger", _adapter(tiny["a1"], "ops-v4"), "4"), Candidate("base", None)],
        rows,
        base_model_path=tiny["base"],
        config=config,
    )
    assert all(c.error is None for c in good.candidates)  # the backend still works


def test_registry_candidates_mark_a_download_without_an_adapter(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = AdapterRegistry(uri, "ops-registry-candidates")
    good = registry.register(log_adapter_run(uri, tmp_path, tiny["a1"]))
    registry.set_alias("champion", good.version)
    registry.register(log_adapter_run(uri, tmp_path, tiny["garbage"]))
    challenger, champion, base = registry_candidates(registry, tmp_path / "adapters")
    assert (challenger.version, challenger.adapter) == ("2", None)
    assert "not valid JSON" in challenger.error
    assert champion.version == "1" and champion.adapter.path.is_dir()
    assert base == Candidate("base", None)
    registry.set_alias("champion", "2")
    assert [c.name for c in registry_candidates(registry, tmp_path / "adapters")] == [
        "challenger",
        "base",
    ]  # the challenger is the champion already: nothing else to compare with
    with pytest.raises(EvaluationError, match="has no nightly"):
        registry_candidates(registry, tmp_path / "adapters", challenger="nightly")


@pytest.mark.parametrize(
    ("candidates", "rows", "message"),
    [
        ([Candidate("base", None)], [], "the eval split is empty"),
        ([Candidate("base", None)], [{"prompt": "q"}], r"lack the column\(s\) \['completion'\]"),
        ([Candidate("base", None)] * 2, [{"prompt": "q", "completion": "a"}], "distinct"),
        ([Candidate("winner", None)], [{"prompt": "q", "completion": "a"}], "distinct"),  # type: ignore[arg-type]
    ],
)
def test_bad_evaluation_input_is_refused(
    tiny: dict[str, Path], candidates: list[Candidate], rows: list[dict[str, str]], message: str
) -> None:
    with pytest.raises(EvaluationError, match=message):
        evaluate_candidates(candidates, rows, base_model_path=tiny["base"], config=_config())


# --- the agent subset on a frozen state -------------------------------------------------------


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("frozen-evaluation")
    return build_frozen_state(live_settings(root / "live"), root / "frozen", embed=False)


def _interactions(settings: Settings) -> int:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        tables = {t for (t,) in conn.execute("SHOW TABLES").fetchall()}
        if "interactions" not in tables:
            return 0
        return conn.execute("SELECT count(*) FROM interactions").fetchone()[0]


@pytest.mark.models
def test_a_pinned_service_answers_with_its_adapter_whatever_the_registry(
    tiny: dict[str, Path], frozen: Settings
) -> None:
    backend = shared_backend(str(tiny["base"]))
    config = LLMConfig.from_settings(frozen)
    pinned = PinnedLLMService(config, LLMClient(backend), _adapter(tiny["a2"], "pinned-v7"))
    assistant = Assistant.open(frozen, llm=pinned)
    try:
        answer = assistant.ask("현재 클러스터 가동율 알려줘?")
    finally:
        assistant.close()
    assert (answer.interaction.adapter, answer.interaction.adapter_version) == ("pinned-v7", "7")
    assert answer.interaction.llm_error is None
    backend.unload_adapter("pinned-v7")


@pytest.mark.models
def test_the_agent_subset_runs_the_assistant_per_candidate(
    tiny: dict[str, Path], rows: list[dict[str, str]], frozen: Settings
) -> None:
    cases = load_cases(SAMPLE_DIR / "golden_questions.jsonl")
    before = _interactions(frozen)
    report = evaluate_candidates(
        [Candidate("challenger", _adapter(tiny["a1"], "ops-v5"), "5"), Candidate("base", None)],
        rows,
        base_model_path=tiny["base"],
        config=_config(agent_cases=2, headline_cases=2),
        agent_cases=cases,
        assistant_settings=frozen,
        headline_cases=[c for c in cases if not c.scenario_step],
    )
    assert report.agent_cases == 2 and report.headline_cases == 2
    for candidate in report.candidates:
        assert candidate.error is None
        assert {"routing_accuracy", "tool_call_accuracy", "grounding"} <= set(candidate.metrics)
        assert 0.0 <= candidate.metrics["headline_pass_rate"] <= 1.0
        assert candidate.metrics["tool_call_accuracy"] > 0  # the rule planner calls the tools
    assert _interactions(frozen) == before  # each candidate ran on the pristine warehouse
    assert "| routing_accuracy ↑ |" in report.markdown()
    assert "| headline_pass_rate ↑ |" in report.markdown()
    with pytest.raises(EvaluationError, match="need assistant_settings"):
        evaluate_candidates(
            [Candidate("base", None)],
            rows,
            base_model_path=tiny["base"],
            config=_config(agent_cases=2),
            agent_cases=cases,
        )
