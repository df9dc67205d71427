"""The finetune group: rated answers → dataset → LoRA adapter → evaluation → promotion.

Each step is its own asset so the UI shows where a loop stopped and why: a dataset that failed
a blocking check trains nothing, an adapter is registered as `challenger` only when training
finished, and `champion` moves only when the gate says so (decision 6 of the design).
"""

import functools
import json

import dagster as dg
import polars as pl

from dagster_platform.deploy.k8s import gpu_step_tags
from dagster_platform.finetune import artifacts
from dagster_platform.finetune.dataset import (
    asked_questions,
    build_dataset,
    collect_examples,
    enough_examples,
    load_split,
    normalise,
    overlapping_splits,
    personal_data_left,
    write_dataset,
)
from dagster_platform.finetune.evaluation import (
    HEADLINE_METRIC,
    EvaluationReport,
    evaluate_candidates,
    log_evaluation,
    registry_candidates,
)
from dagster_platform.finetune.gate import decide
from dagster_platform.finetune.promotion import promote
from dagster_platform.finetune.training import TrainProgress, train_adapter
from dagster_platform.finetune.triggers import USABLE_FEEDBACK_TOTAL, usable_feedback_total
from dagster_platform.lib.markdown import markdown_table, png_markdown
from dagster_platform.llm.registry import CHALLENGER, AdapterRegistry
from dagster_platform.settings import Settings
from resources import (
    WAREHOUSE_POOL,
    DataFolderResource,
    FinetuneResource,
    KnowledgeResource,
    LLMResource,
    MLflowResource,
    OntologyResource,
    StateResource,
    WarehouseResource,
)

GROUP = "finetune"
OWNERS = ["team:ml-platform"]
FINETUNE_TAG = "dagster-platform/finetune"


def _blocking(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, description=description, blocking=True)


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "parquet"},
    owners=OWNERS,
    pool=WAREHOUSE_POOL,
    deps=["feedback_events", "ontology_objects"],
    check_specs=[
        _blocking("enough_examples", "sft_dataset", "At least the gate's `min_examples`."),
        _blocking(
            "no_personal_data", "sft_dataset", "No secret or personal data left after scrubbing."
        ),
        _blocking("splits_disjoint", "sft_dataset", "No example (or prompt) in both splits."),
    ],
)
def sft_dataset(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    finetune: FinetuneResource,
    data_folder: DataFolderResource,
    state: StateResource,
    ontology: OntologyResource,
):
    """Positively rated answers and corrections (a correction wins over the answer), plus
    instruction pairs from the runbooks and the ontology, and the headline task: the facts of
    rated answers to their accepted headline, and the composer's headlines to template
    questions over the inventory (never a golden question: those judge the adapters).
    Scrubbed, deduplicated by a normalised hash, split by hash, in the base model's chat
    template. Written as Parquet and JSONL under `finetune/datasets/<version>` in the state
    folder; the loop trains on it only when every blocking check passes."""
    from transformers import AutoTokenizer

    from dagster_platform.agents.evaluation import load_cases
    from dagster_platform.finetune.teacher import teacher_examples

    gate = finetune.gate()
    base_model = finetune.base_model()
    golden = [c.question for c in load_cases(data_folder.path / "golden_questions.jsonl")]
    settings = state.settings(data_folder=data_folder, ontology=ontology)
    taught, untaught = teacher_examples(settings, held_out=golden)
    with warehouse.get_connection() as conn:
        raw, skipped = collect_examples(conn, data_folder.path / "runbooks")
        usable = usable_feedback_total(conn)
    raw, skipped = [*raw, *taught], skipped + untaught
    dataset = build_dataset(
        raw, AutoTokenizer.from_pretrained(base_model), base_model=base_model, skipped=skipped
    )
    enough, enough_detail = enough_examples(dataset, gate.min_examples)
    leaks = personal_data_left(dataset)
    overlap = overlapping_splits(dataset)
    passed = enough and not leaks and not overlap
    path = write_dataset(dataset, artifacts.datasets_dir(state.path)) if not leaks else None
    if passed and path is not None:
        artifacts.mark_latest_dataset(state.path, dataset.version)
    counts = dataset.counts()
    context.log.info(
        f"dataset {dataset.version}: {counts}, scrubbed {dict(dataset.scrubbed)}, "
        f"skipped {dict(skipped)}"
    )
    yield dg.MaterializeResult(
        metadata={
            "version": dataset.version,
            "dagster/row_count": dg.MetadataValue.int(len(dataset.rows)),
            "counts": dg.MetadataValue.json(counts),
            "scrubbed": dg.MetadataValue.json(dict(dataset.scrubbed)),
            "skipped": dg.MetadataValue.json(dict(dataset.skipped)),
            "token_stats": dg.MetadataValue.md(_stats_md(dataset.stats)),
            "sample": dg.MetadataValue.md(_sample_md(dataset.rows)),
            "path": dg.MetadataValue.path(str(path)) if path else "not written: personal data",
            USABLE_FEEDBACK_TOTAL: dg.MetadataValue.int(usable),
        },
        data_version=dg.DataVersion(dataset.version),
    )
    yield dg.AssetCheckResult(
        check_name="enough_examples",
        passed=enough,
        metadata={"detail": enough_detail, "minimum": gate.min_examples},
    )
    yield dg.AssetCheckResult(
        check_name="no_personal_data",
        passed=not leaks,
        metadata={"left": dg.MetadataValue.json([[i, kinds] for i, kinds in leaks[:50]])},
    )
    yield dg.AssetCheckResult(
        check_name="splits_disjoint",
        passed=not overlap,
        metadata={"in_both": dg.MetadataValue.json(overlap[:50])},
    )


def _stats_md(stats: dict) -> str:
    rows = [
        {"split": split, "examples": values["count"]}
        | {
            f"{name.removesuffix('_tokens')} {stat}": round(value, 1)
            for name, figures in values.items()
            if isinstance(figures, dict)
            for stat, value in figures.items()
        }
        for split, values in stats.items()
    ]
    return markdown_table(pl.DataFrame(rows)) if rows else "no examples"


def _sample_md(rows: list[dict], count: int = 5) -> str:
    picked = [
        {
            "source": r["source"],
            "split": r["split"],
            "question": json.loads(r["messages"])[-1]["content"],
            "completion": r["completion"],
        }
        for r in rows[:count]
    ]
    return markdown_table(pl.DataFrame(picked)) if picked else "no examples"


def lora_adapter(
    context: dg.AssetExecutionContext,
    finetune: FinetuneResource,
    state: StateResource,
    mlflow: MLflowResource,
    llm: LLMResource,
):
    """A LoRA adapter trained on the latest dataset that passed its checks, with the recipe in
    `data/finetune/recipe.yaml` (on 4-bit base weights where it resolves to QLoRA). Loss and
    tokens/s go to the run's logs and to MLflow while it trains; the finished adapter becomes a
    new version of the registered model with the alias `challenger`. An interrupted run
    registers nothing."""
    dataset_dir = artifacts.latest_dataset(state.path)
    recipe = finetune.recipe()
    history: list[TrainProgress] = []

    def progress(update: TrainProgress) -> None:
        history.append(update)
        context.log.info(
            f"step {update.step}/{update.max_steps} loss {update.loss:.4f} "
            f"{update.tokens_per_s:.0f} tokens/s lr {update.learning_rate:.2e}"
        )

    result = train_adapter(
        recipe,
        dataset_dir,
        artifacts.training_dir(state.path, context.run_id),
        base_model_path=finetune.base_model(),
        tracking_uri=mlflow.uri,
        artifact_root=mlflow.artifacts,
        on_progress=progress,
    )
    registry = mlflow.registry(llm.config().registered_model)
    version = registry.register(
        result.run_id,
        tags={"dataset_version": result.dataset_version, "dagster_run_id": context.run_id},
        description=f"LoRA r={recipe.lora_r} on dataset {result.dataset_version}",
    )
    context.log.info(f"registered {registry.registered_model} v{version.version} @{CHALLENGER}")
    return dg.MaterializeResult(
        metadata={
            "registered_version": version.version,
            "alias": CHALLENGER,
            "mlflow_run_id": result.run_id,
            "dataset_version": result.dataset_version,
            "steps": dg.MetadataValue.int(result.steps),
            "train_loss": dg.MetadataValue.float(result.train_loss),
            "tokens_per_s": dg.MetadataValue.float(result.tokens_per_s),
            "peak_memory_mb": dg.MetadataValue.float(result.peak_memory_mb),
            "wall_s": dg.MetadataValue.float(result.wall_s),
            "qlora": result.qlora,
            "qlora_reason": result.qlora_reason,
            "device": result.device,
            "loss_curve": dg.MetadataValue.md(
                png_markdown("training loss", artifacts.loss_curve_png(history))
            ),
        }
    )


def adapter_evaluation(
    context: dg.AssetExecutionContext,
    finetune: FinetuneResource,
    state: StateResource,
    mlflow: MLflowResource,
    llm: LLMResource,
    data_folder: DataFolderResource,
    ontology: OntologyResource,
    knowledge: KnowledgeResource,
):
    """The challenger beside the champion and the base model: loss, perplexity and ROUGE-L on
    the eval split, and routing, tool and grounding scores on a subset of the golden questions
    run through the agents on a frozen copy of the sample. A report table and chart here and
    in the MLflow experiment `adapter_evaluation`."""
    from dagster_platform.agents.evaluation import load_cases
    from dagster_platform.agents.frozen import build_frozen_state

    settings = state.settings(
        data_folder=data_folder, ontology=ontology, knowledge=knowledge, mlflow=mlflow
    )
    gate = finetune.gate()
    registry = mlflow.registry(llm.config().registered_model)
    challenger = _challenger(registry)
    dataset_dir = artifacts.dataset_dir(state.path, challenger.dataset_version)
    cases, held_out, frozen = None, None, None
    eval_rows = load_split(dataset_dir, "eval")
    if gate.evaluation.agent_cases or gate.evaluation.headline_cases:
        cases = load_cases(data_folder.path / "golden_questions.jsonl")
        asked = asked_questions([*load_split(dataset_dir, "train"), *eval_rows])
        held_out = [c for c in cases if not c.scenario_step and normalise(c.question) not in asked]
        frozen = build_frozen_state(settings, artifacts.frozen_state_dir(state.path))
    report = evaluate_candidates(
        registry_candidates(registry, state.path / "adapters"),
        eval_rows,
        base_model_path=finetune.base_model(),
        config=gate,
        agent_cases=cases if gate.evaluation.agent_cases else None,
        assistant_settings=frozen,
        headline_cases=held_out,
    )
    run_id = log_evaluation(
        report,
        mlflow.uri,
        mlflow.artifacts,
        tags={"dagster_run_id": context.run_id},
    )
    path = artifacts.save_evaluation(state.path, challenger.version, report)
    champion = report.get("champion")
    for candidate in report.candidates:
        context.log.info(f"{candidate.label}: {candidate.error or candidate.metrics}")
    return dg.MaterializeResult(
        metadata={
            "challenger_version": challenger.version,
            "champion_version": champion.version if champion else "none (base model)",
            "report": dg.MetadataValue.md(report.markdown()),
            "headline_pass_rate": dg.MetadataValue.json(
                {
                    c.label: c.metrics.get(HEADLINE_METRIC)
                    for c in report.candidates
                    if HEADLINE_METRIC in c.metrics
                }
            ),
            "chart": dg.MetadataValue.md(png_markdown("evaluation", report.chart_png())),
            "mlflow_run_id": run_id,
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def promoted_adapter(
    context: dg.AssetExecutionContext,
    finetune: FinetuneResource,
    llm: LLMResource,
    warehouse: WarehouseResource,
    state: StateResource,
    mlflow: MLflowResource,
):
    """The gate: the challenger takes `champion` only when its primary metric beats the
    incumbent's by the configured margin and no guardrail regresses. A promoted adapter is
    served at once; one that fails to load gives the alias back to the previous champion.
    Every decision is a row of the `promotions` table."""
    registry = mlflow.registry(llm.config().registered_model)
    challenger = _challenger(registry)
    report: EvaluationReport = artifacts.load_evaluation(state.path, challenger.version)
    measured = report.get("challenger")
    if measured is None:
        raise dg.Failure(f"the evaluation of v{challenger.version} has no challenger row")
    decision = decide(measured, report.incumbent(), finetune.gate())
    outcome = promote(
        registry,
        decision,
        challenger.version,
        service=llm.service(mlflow),
        conn_factory=warehouse.get_connection,
        actor=f"dagster:{context.run_id}",
        run_id=context.run_id,
        metrics={c.name: c.metrics for c in report.candidates},
    )
    context.log.info(f"v{challenger.version}: {outcome.action}; {'; '.join(outcome.reasons)}")
    return dg.MaterializeResult(
        metadata={
            "action": outcome.action,
            "challenger_version": challenger.version,
            "champion_before": outcome.champion_before or "none",
            "champion_after": outcome.champion_after or "none",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in outcome.reasons)),
        }
    )


def _challenger(registry: AdapterRegistry):
    challenger = registry.by_alias(CHALLENGER)
    if challenger is None:
        raise dg.Failure(f"{registry.registered_model} has no @{CHALLENGER}: train one first")
    return challenger


def finetune_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The loop's assets. Training, evaluating (the model's loss and answers) and serving the
    adapter carry the GPU node tags of `settings`, read when the definitions load: dagster-k8s
    puts them on a GPU node when they run as pods of their own (the k8s profile); elsewhere
    the tags are not read."""
    on_gpu = functools.partial(
        dg.asset,
        group_name=GROUP,
        kinds={"pytorch", "mlflow"},
        owners=OWNERS,
        op_tags=gpu_step_tags(settings),
    )
    return [
        sft_dataset,
        on_gpu(deps=[sft_dataset])(lora_adapter),
        on_gpu(deps=["lora_adapter"])(adapter_evaluation),
        on_gpu(kinds={"mlflow", "duckdb"}, pool=WAREHOUSE_POOL, deps=["adapter_evaluation"])(
            promoted_adapter
        ),
    ]
