"""Fine-tuning on CPU: training tokens/s and peak memory of `train_adapter` (what the
`lora_adapter` asset runs) against a bare peft training loop, and of QLoRA against LoRA.

- Data: a dataset version written by the real builder (`dagster_platform.finetune.dataset`)
  from the sample: a pair per runbook section, and the symptoms, root cause and resolution of
  each incident asked as three questions and taken as well-rated answers.
- Both paths train the packaged SmolLM2 with the default recipe cut to STEPS optimizer steps:
  the same tokenisation, example order, batches, optimizer (fused AdamW), schedule and gradient
  clipping. The bare loop is a plain torch loop over a DataLoader: no Trainer, no callbacks,
  no MLflow. Tokens are the non-padding tokens trained on; both paths must count the same.
- QLoRA is the asset path with `qlora: true` (4-bit NF4 base weights, bf16 compute, peft's
  k-bit preparation with its gradient checkpointing) on the same recipe and batches; the
  asset path itself pins `qlora: false`, so asset, bare and qlora are three fixed trainings.
- Each measured run is its own subprocess, so peak memory (`ru_maxrss`, loading included) is
  that path's alone; ROUNDS rounds rotate which path goes first, and medians are compared.
  Tokens/s is over the training loop; wall time (model load, tokenising, saving, MLflow) is
  reported beside it. `peak_memory_mb_reported_*` is what `train_adapter` itself reports.
- Then `dagster-platform demo` runs as a user would, on a fresh state, against its budget of
  15 minutes on this machine.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine
from dagster_platform.finetune.dataset import (
    RawExample,
    build_dataset,
    load_split,
    runbook_examples,
    write_dataset,
)
from dagster_platform.finetune.recipe import Recipe
from dagster_platform.finetune.training import (
    collator,
    encode_dataset,
    load_base_model,
    load_tokenizer,
    peft_model,
    train_adapter,
)
from dagster_platform.llm.service import resolve_base_model
from dagster_platform.settings import REPO_ROOT, Settings, get_settings

ROUNDS = 5  # single runs vary by ±10 % on a shared two-core machine
STEPS = 2
RECIPE = REPO_ROOT / "data" / "finetune" / "recipe.yaml"
QUESTIONS = (
    ("symptoms", "What were the symptoms of incident {id} ({title})?"),
    ("root_cause", "What was the root cause of incident {id} ({title})?"),
    ("resolution", "How was incident {id} ({title}) resolved?"),
)
PATHS = ("asset", "bare", "qlora")  # qlora: the asset path on 4-bit base weights
DEMO_BUDGET_S = 15 * 60


def _progress(message: str) -> None:
    print(f"[bench finetune] {message}", file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------


def incident_pairs(incidents: Path) -> list[tuple[str, str]]:
    """(question, answer) pairs from the incident log, in file order."""
    pairs = []
    for line in incidents.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        incident = json.loads(line)
        for field, question in QUESTIONS:
            if incident.get(field):
                pairs.append(
                    (question.format(**incident, id=incident["incident_id"]), incident[field])
                )
    return pairs


def sample_examples(data_dir: Path, limit: int | None = None) -> list[RawExample]:
    """The sample runbooks' sections, then three questions per incident taken as answers
    people rated well; the first `limit` of them."""
    runbooks, _skipped = runbook_examples(data_dir / "runbooks")
    incidents = data_dir / "incidents.jsonl"
    rated = [RawExample("feedback", q, a) for q, a in incident_pairs(incidents)]
    return [*runbooks, *rated][:limit]


def sample_dataset(root: Path, data_dir: Path, base_model: str, limit: int | None = None) -> Path:
    """A dataset version written by the real builder, as the `sft_dataset` asset writes it."""
    raw = sample_examples(data_dir, limit)
    dataset = build_dataset(raw, load_tokenizer(base_model), base_model=base_model)
    return write_dataset(dataset, root)


# --- the two measured paths ------------------------------------------------------------------


def bare_peft_loop(recipe: Recipe, dataset_dir: Path, base_model_path: str) -> dict[str, Any]:
    """The same training as `train_adapter` in the plainest torch loop: CPU, max_steps within
    one epoch (the Trainer's epoch boundary is not imitated)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    if recipe.max_steps is None:
        raise ValueError("the bare loop runs a recipe with max_steps")
    started = time.perf_counter()
    tokenizer = load_tokenizer(base_model_path)
    rows = load_split(dataset_dir, "train")
    data = encode_dataset(tokenizer, rows, recipe.max_seq_length, recipe.seed)
    torch.manual_seed(recipe.seed)
    model = peft_model(recipe, load_base_model(base_model_path, qlora=False))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=recipe.learning_rate, weight_decay=recipe.weight_decay, fused=True
    )
    warmup = math.ceil(recipe.max_steps * recipe.warmup_ratio)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, recipe.max_steps)
    train_started = time.perf_counter()
    loader = DataLoader(data.features, batch_size=recipe.batch_size, collate_fn=collator(tokenizer))
    if recipe.max_steps * recipe.gradient_accumulation > len(loader):
        raise ValueError(f"{recipe.max_steps} steps need more than the {len(loader)} batches")
    batches = iter(loader)
    tokens = 0
    for _step in range(recipe.max_steps):
        for _ in range(recipe.gradient_accumulation):
            batch = next(batches)
            (model(**batch).loss / recipe.gradient_accumulation).backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    train_s = time.perf_counter() - train_started
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / train_s,
        "train_s": train_s,
        "wall_s": time.perf_counter() - started,
    }


def asset_path(
    recipe: Recipe, dataset_dir: Path, base_model_path: str, workdir: Path
) -> dict[str, Any]:
    """`train_adapter` as the asset calls it, into an MLflow store under `workdir`."""
    result = train_adapter(
        recipe,
        dataset_dir,
        Path(tempfile.mkdtemp(dir=workdir, prefix="adapter-")) / "out",
        base_model_path=base_model_path,
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        artifact_root=workdir / "mlartifacts",
    )
    return {
        "tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "train_s": result.train_s,
        "wall_s": result.wall_s,
        "reported_peak_memory_mb": result.peak_memory_mb,
        "qlora": result.qlora,
    }


def path_recipe(path: str, recipe: Recipe) -> Recipe:
    """The recipe a path trains: QLoRA for `qlora` only, whatever the recipe's `auto` picks."""
    return recipe.model_copy(update={"qlora": path == "qlora"})


def measure(path: str, recipe: Recipe, dataset_dir: Path, base_model: str, workdir: Path) -> dict:
    """One run of one path in a fresh interpreter: its figures and its peak resident memory."""
    job = {
        "path": path,
        "recipe": path_recipe(path, recipe).model_dump(mode="json"),
        "dataset_dir": str(dataset_dir),
        "base_model": base_model,
        "workdir": str(workdir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.finetune", "--measure", json.dumps(job)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {path} run failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_here(job: dict[str, Any]) -> dict[str, Any]:
    recipe = Recipe.model_validate(job["recipe"])
    dataset_dir, workdir = Path(job["dataset_dir"]), Path(job["workdir"])
    if job["path"] == "bare":
        figures = bare_peft_loop(recipe, dataset_dir, job["base_model"])
    else:
        figures = asset_path(recipe, dataset_dir, job["base_model"], workdir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {**figures, "peak_memory_mb": peak}


# --- sections --------------------------------------------------------------------------------


def training_throughput(
    recipe: Recipe, dataset_dir: Path, base_model: str, rounds: int, workdir: Path
) -> dict[str, Any]:
    """Asset against bare, and QLoRA against the asset's LoRA, rotating which path goes first
    round by round; medians compared."""
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    for round_ in range(rounds):
        shift = round_ % len(PATHS)
        for path in PATHS[shift:] + PATHS[:shift]:
            runs[path].append(measure(path, recipe, dataset_dir, base_model, workdir))
        rates = ", ".join(f"{runs[path][-1]['tokens_per_s']:.1f} {path}" for path in PATHS)
        _progress(f"round {round_ + 1}/{rounds}: tokens/s {rates}")

    def median(path: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[path])

    def same_tokens(*paths: str) -> bool:
        return all(run["tokens"] == runs["asset"][0]["tokens"] for p in paths for run in runs[p])

    figures: dict[str, Any] = {
        "rounds": rounds,
        "steps": recipe.max_steps,
        "tokens_per_run": runs["asset"][0]["tokens"],
        "same_tokens_asset_vs_bare": same_tokens("asset", "bare"),
        "same_tokens_qlora_vs_lora": same_tokens("qlora", "asset"),
        "qlora_trained_qlora": all(run["qlora"] for run in runs["qlora"])
        and not any(run["qlora"] for run in runs["asset"]),
    }
    for path in PATHS:
        figures[f"tokens_per_s_{path}"] = round(median(path, "tokens_per_s"), 1)
        figures[f"tokens_per_s_{path}_rounds"] = [round(r["tokens_per_s"], 1) for r in runs[path]]
        figures[f"peak_memory_mb_{path}"] = round(median(path, "peak_memory_mb"), 1)
        figures[f"wall_s_{path}"] = round(median(path, "wall_s"), 2)
        if path != "bare":
            reported = median(path, "reported_peak_memory_mb")
            figures[f"peak_memory_mb_reported_{path}"] = round(reported, 1)
    figures["ratio_asset_vs_bare_tokens_per_s"] = round(
        median("asset", "tokens_per_s") / median("bare", "tokens_per_s"), 3
    )
    figures["ratio_asset_vs_bare_peak_memory"] = round(
        median("asset", "peak_memory_mb") / median("bare", "peak_memory_mb"), 3
    )
    figures["ratio_asset_vs_bare_wall_s"] = round(
        median("asset", "wall_s") / median("bare", "wall_s"), 3
    )
    figures["ratio_qlora_peak_memory"] = round(
        median("qlora", "peak_memory_mb") / median("asset", "peak_memory_mb"), 3
    )
    figures["ratio_qlora_tokens_per_s"] = round(
        median("qlora", "tokens_per_s") / median("asset", "tokens_per_s"), 3
    )
    return figures


def demo_wall_time(workdir: Path) -> dict[str, Any]:
    """`dagster-platform demo` as a user runs it, on a fresh state, against its 15-minute
    budget; the steps' own timings come from its summary."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dagster_platform.cli", "demo", "--json",
         "--state", str(workdir / "demo")],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"demo failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "demo_wall_s": round(wall, 1),
        "demo_steps_s": summary["steps"],
        "demo_gate": summary["loop"].get("action"),
        "ratio_demo_vs_budget_15min": round(wall / DEMO_BUDGET_S, 3),
    }


def run(
    rounds: int = ROUNDS,
    steps: int = STEPS,
    examples: int | None = None,
    settings: Settings | None = None,
    demo: bool = True,
) -> dict[str, Any]:
    """`examples` keeps the first sample examples, runbook sections first (None: all);
    `steps` is the optimizer steps of each measured run. Each measured section is a function
    that returns its own figures, merged here."""
    settings = settings or get_settings()
    base_model = resolve_base_model(settings)
    load_before = os.getloadavg()[0]
    recipe = Recipe.load(RECIPE).model_copy(
        update={"max_steps": steps, "epochs": None, "logging_steps": 1}  # every step reports
    )
    figures: dict[str, Any] = {"name": "finetune"}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as folder:
        workdir = Path(folder)
        dataset_dir = sample_dataset(workdir / "datasets", settings.data_dir, base_model, examples)
        train = len(load_split(dataset_dir, "train"))
        _progress(f"training: {train} examples, {steps} steps, {rounds} rounds")
        figures.update(training_throughput(recipe, dataset_dir, base_model, rounds, workdir))
        if demo:
            _progress("dagster-platform demo on a fresh state")
            figures.update(demo_wall_time(workdir))
    figures.update(
        {
            "model": Path(base_model).name,
            "recipe": recipe.model_dump(mode="json"),
            "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "machine": machine(),
        }
    )
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(_measure_here(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run(), ensure_ascii=False))
