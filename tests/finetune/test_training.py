"""LoRA training on a tiny random Llama (the packaged tokenizer and chat template): the recipe,
the completion-only labels, a tracked run with its adapter artifact, interruptions that leave
nothing behind, and the fine-tuning benchmark's measured paths. QLoRA trains the packaged
SmolLM2 on the CPU, and its adapter serves over the unquantised base."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from mlflow import MlflowClient

from benchmarks import finetune as finetune_benchmark
from dagster_platform.finetune.recipe import Recipe, RecipeError
from dagster_platform.finetune.training import (
    CLEAR_REFS,
    IGNORE_INDEX,
    QLoRAUnavailable,
    TrainingError,
    TrainingInterrupted,
    TrainProgress,
    TrainResult,
    check_qlora_available,
    collator,
    encode_dataset,
    encode_example,
    fp32_weights_mb,
    load_tokenizer,
    peak_memory_mb,
    reset_peak_memory,
    train_adapter,
)
from tests.support.state import SAMPLE_DIR, live_settings
from tests.support.tiny_models import PREPARED_LLM, build_tiny_llm

QUESTIONS = [
    ("Which queue does nightly_orders_etl use?", "root.etl.daily, on etl-prod."),
    ("How do I find the heaviest Spark jobs?", "Run `yarn top` and sort by memory."),
    ("Who approves a kill?", "A person with the approver role."),
    ("What does ClusterUtilizationHigh mean?", "Memory or vCores above 85 % for 10 minutes."),
    ("Where are the runbooks?", "In the knowledge base, next to the incidents."),
    ("What is HDFS safe mode?", "A read-only state of the NameNode during startup."),
    ("How is consumer lag measured?", "Log-end offset minus the committed offset."),
    ("What fixes executor OOM?", "More executor memory or fewer cores per executor."),
]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_llm(tmp_path_factory.mktemp("models") / "tiny-llm"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlflow")


def _uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


def write_dataset(folder: Path, tokenizer_path: str) -> Path:
    """A dataset version in the shared contract's layout, every example in the train split."""
    tokenizer = load_tokenizer(tokenizer_path)
    rows = []
    for question, completion in QUESTIONS:
        messages = [{"role": "system", "content": "Answer briefly."}]
        messages.append({"role": "user", "content": question})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rows.append(
            {
                "example_id": hashlib.sha256(question.encode()).hexdigest()[:16],
                "source": "feedback",
                "interaction_id": None,
                "messages": json.dumps(messages),
                "completion": completion,
                "prompt": prompt,
                "text": prompt + completion + tokenizer.eos_token,
                "split": "train",
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
        )
    folder.mkdir(parents=True)
    pl.DataFrame(rows, schema_overrides={"interaction_id": pl.String}).write_parquet(
        folder / "train.parquet"
    )
    (folder / "manifest.json").write_text(json.dumps({"version": "0123456789abcdef"}))
    return folder


@pytest.fixture(scope="module")
def dataset(tiny_llm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("datasets") / "0123456789abcdef", tiny_llm)


def recipe(**changes: object) -> Recipe:
    fields: dict[str, object] = {
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 0.05,
        "max_steps": 3,
        "max_seq_length": 96,
        "batch_size": 2,
        "gradient_accumulation": 1,
        "qlora": False,
        "logging_steps": 1,
    }
    return Recipe.model_validate({**fields, **changes})


def _runs(store: Path, experiment: str) -> list:
    client = MlflowClient(_uri(store))
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def _train(tiny_llm: str, dataset: Path, store: Path, output: Path, experiment: str, **kw):
    return train_adapter(
        kw.pop("recipe", recipe()),
        dataset,
        output,
        base_model_path=tiny_llm,
        tracking_uri=_uri(store),
        experiment=experiment,
        artifact_root=store / "artifacts",
        **kw,
    )


# --- the recipe ------------------------------------------------------------------------------


def test_the_default_recipe_loads_and_round_trips(tmp_path: Path) -> None:
    default = Recipe.load(finetune_benchmark.RECIPE)
    assert default.max_steps and default.epochs is None and default.base_model is None
    assert default.qlora == "auto"
    copy = tmp_path / "copy.yaml"
    copy.write_text(default.to_yaml())
    assert Recipe.load(copy) == default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_steps: 5\nrank: 8\n", r"unknown field 'rank' \(known fields: base_model, lora_r"),
        ("max_steps: 5\nepochs: 2\n", "exactly one of `epochs` and `max_steps`"),
        ("lora_r: 8\n", "exactly one of `epochs` and `max_steps`"),
        ("max_steps: 5\nlora_r: -4\n", "lora_r: Input should be greater than 0"),
        ("max_steps: 5\nlearning_rate: 0\n", "learning_rate: Input should be greater than 0"),
        ("max_steps: 5\nqlora: yes please\n", "qlora"),
        ("- max_steps\n", "must hold a mapping"),
        ("max_steps: [5\n", "could not be read"),
    ],
)
def test_recipe_errors_name_the_file_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=expected) as raised:
        Recipe.load(path)
    assert str(path) in str(raised.value)


def test_a_missing_recipe_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"recipe file .*nowhere\.yaml does not exist"):
        Recipe.load(tmp_path / "nowhere.yaml")


def test_qlora_auto_takes_cuda_and_on_the_cpu_only_weights_over_half_the_memory() -> None:
    auto = recipe(qlora="auto")
    assert auto.resolved_qlora(True) is True
    assert auto.qlora_decision(False, 513.0, 20_000.0) == (
        False,
        "qlora: auto on the CPU, fp32 base weights 513 MB, 20000 MB free: within half, LoRA",
    )
    assert auto.resolved_qlora(False, 10_001.0, 20_000.0) is True
    assert auto.resolved_qlora(False, 10_000.0, 20_000.0) is False
    assert auto.resolved_qlora(False) is False  # a size unknown keeps LoRA
    assert recipe(qlora=True).qlora_decision(False) == (True, "the recipe sets qlora: true")
    assert recipe(qlora=False).qlora_decision(True, 9e9, 1.0) == (
        False,
        "the recipe sets qlora: false",
    )


def test_the_fp32_weights_are_sized_from_the_files_and_their_dtype(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2**20)
    assert fp32_weights_mb(str(tmp_path)) == 2.0  # bf16 on disk, twice that in fp32
    assert fp32_weights_mb("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id
    assert 500 < fp32_weights_mb(str(PREPARED_LLM)) < 530  # SmolLM2-135M, saved in fp32


@pytest.mark.skipif(not Path(CLEAR_REFS).exists(), reason="peak reset needs Linux's /proc")
def test_the_peak_memory_starts_over_at_each_run() -> None:
    """An earlier, larger peak in the same process (a test session, a run worker) is not the
    next run's."""
    reset_peak_memory("cpu")
    bulk = torch.ones(96 * 2**20 // 4)  # 96 MiB, every page touched
    before = peak_memory_mb("cpu")
    del bulk
    reset_peak_memory("cpu")
    assert peak_memory_mb("cpu") < before - 64


# --- data ------------------------------------------------------------------------------------


def test_labels_mask_the_prompt_and_long_examples_are_cut_or_dropped(tiny_llm: str) -> None:
    tokenizer = load_tokenizer(tiny_llm)
    prompt = "<|im_start|>user\nHow do I find the heaviest jobs?<|im_end|>\n<|im_start|>assistant\n"
    completion = "Run yarn top and sort by memory."
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]

    full = encode_example(tokenizer, prompt, completion, 512)
    assert full is not None
    assert full["input_ids"] == [*prompt_ids, *answer_ids, tokenizer.eos_token_id]
    assert full["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert full["labels"][len(prompt_ids) :] == [*answer_ids, tokenizer.eos_token_id]

    cut = encode_example(tokenizer, prompt, completion, len(prompt_ids) + 3)
    assert cut is not None and cut["input_ids"] == prompt_ids + answer_ids[:3]
    assert encode_example(tokenizer, prompt, completion, len(prompt_ids)) is None

    rows = [{"prompt": prompt, "completion": completion}, {"prompt": "x" * 0, "completion": "ok"}]
    encoded = encode_dataset(tokenizer, rows, len(prompt_ids), seed=0)
    assert encoded.dropped == 1 and len(encoded.features) == 1

    batch = collator(tokenizer)([full, cut])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(full["input_ids"]))
    padded = batch["attention_mask"][1] == 0
    assert int(padded.sum()) == len(full["input_ids"]) - len(cut["input_ids"])
    assert bool((batch["labels"][1][padded] == IGNORE_INDEX).all())


# --- a tracked run ---------------------------------------------------------------------------


def test_training_leaves_a_tracked_adapter_that_changes_the_outputs(
    tiny_llm: str, dataset: Path, store: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen: list[TrainProgress] = []
    result = _train(tiny_llm, dataset, store, tmp_path / "run", "tracked", on_progress=seen.append)

    assert result.steps == 3 and result.examples == len(QUESTIONS) and result.dropped == 0
    assert result.dataset_version == "0123456789abcdef" and result.device == "cpu"
    assert result.qlora is False and result.peak_memory_mb > 0 and result.wall_s > result.train_s
    assert result.qlora_reason == "the recipe sets qlora: false"
    rows = pl.read_parquet(dataset / "train.parquet").to_dicts()
    encoded = encode_dataset(load_tokenizer(tiny_llm), rows, 96, seed=42)
    assert result.tokens == sum(len(f["input_ids"]) for f in encoded.features[:6])
    assert result.tokens_per_s == pytest.approx(result.tokens / result.train_s)
    assert [p.step for p in seen] == [1, 2, 3] and all(p.max_steps == 3 for p in seen)
    assert all(p.loss > 0 and p.tokens_per_s > 0 for p in seen)
    assert result.train_loss == seen[-1].loss

    adapter = result.adapter_dir
    assert adapter == tmp_path / "run" / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "recipe.yaml"):
        assert (adapter / name).is_file(), name
    assert Recipe.model_validate(yaml.safe_load((adapter / "recipe.yaml").read_text())) == recipe()
    assert json.loads((adapter / "dataset.json").read_text()) == {
        "version": "0123456789abcdef",
        "path": str(dataset.resolve()),
    }
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left

    base = AutoModelForCausalLM.from_pretrained(tiny_llm)
    ids = torch.tensor([[1, 9690, 198, 2683, 359]])
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, str(adapter))(ids).logits
    assert (after - before).abs().max() > 1e-3

    client = MlflowClient(_uri(store))
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((store / "artifacts" / "tracked").as_uri())
    assert (
        run.data.params["lora_r"] == "4"
        and run.data.params["lora_target_modules"] == "q_proj,v_proj"
    )
    assert run.data.params["dataset_version"] == "0123456789abcdef"
    assert run.data.params["qlora_resolved"] == "False"
    assert run.data.params["qlora_reason"] == "the recipe sets qlora: false"
    for key in ("loss", "tokens_per_s", "learning_rate"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2, 3], key
    assert run.data.metrics["train_tokens"] == result.tokens
    logged = {f.path for f in client.list_artifacts(result.run_id, "adapter")}
    assert {"adapter/recipe.yaml", "adapter/dataset.json", "adapter/adapter_config.json"} <= logged


# --- what must leave nothing behind ----------------------------------------------------------


def _assert_nothing_left(store: Path, experiment: str, status: str, parent: Path) -> None:
    (run,) = _runs(store, experiment)
    assert run.info.status == status
    assert MlflowClient(_uri(store)).list_artifacts(run.info.run_id, "adapter") == []
    assert list(parent.iterdir()) == []


def test_a_stopped_run_registers_nothing(
    tiny_llm: str, dataset: Path, store: Path, tmp_path: Path
) -> None:
    stop = threading.Event()
    out = tmp_path / "runs"
    out.mkdir()
    with pytest.raises(TrainingInterrupted, match="step 1 of 3"):
        _train(
            tiny_llm,
            dataset,
            store,
            out / "run",
            "stopped",
            on_progress=lambda _: stop.set(),
            stop=stop,
        )
    _assert_nothing_left(store, "stopped", "KILLED", out)


@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("disk gone"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_an_error_or_ctrl_c_mid_run_propagates_and_leaves_nothing(
    tiny_llm: str, dataset: Path, store: Path, tmp_path: Path, error: BaseException, status: str
) -> None:
    def fail(progress: TrainProgress) -> None:
        if progress.step == 2:
            raise error

    out = tmp_path / "runs"
    out.mkdir()
    experiment = f"broken-{status}"
    with pytest.raises(type(error)):
        _train(tiny_llm, dataset, store, out / "run", experiment, on_progress=fail)
    _assert_nothing_left(store, experiment, status, out)


def test_an_unknown_target_module_is_refused_before_a_run_with_the_known_ones(
    tiny_llm: str, dataset: Path, store: Path, tmp_path: Path
) -> None:
    wrong = recipe(lora_target_modules=["q_proj", "query_key_value"])
    with pytest.raises(RecipeError, match=r"no module 'query_key_value'.*k_proj.*v_proj"):
        _train(tiny_llm, dataset, store, tmp_path / "run", "wrong-target", recipe=wrong)
    assert _runs(store, "wrong-target") == [] and not (tmp_path / "run").exists()


def test_qlora_without_bitsandbytes_is_a_clear_error(
    tiny_llm: str, dataset: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bitsandbytes is faked away: None in sys.modules makes its import fail as if absent."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(
        QLoRAUnavailable, match=r"needs the bitsandbytes package.*pip install 'bitsandbytes>="
    ):
        _train(tiny_llm, dataset, store, tmp_path / "run", "qlora", recipe=recipe(qlora=True))
    assert _runs(store, "qlora") == [] and not (tmp_path / "run").exists()


def test_bitsandbytes_that_cannot_quantise_here_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake bitsandbytes build without 4-bit kernels for this device."""
    import bitsandbytes.functional

    def no_kernel(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("no quantize_4bit kernel for the CPU")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", no_kernel)
    with pytest.raises(QLoRAUnavailable, match=r"cannot quantise to 4-bit NF4 on cpu.*no quant"):
        check_qlora_available("cpu")


# --- QLoRA on the packaged SmolLM2 -----------------------------------------------------------


@pytest.fixture(scope="module")
def qlora_run(dataset: Path, store: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """One short QLoRA run on the real base model, shared by the tests that look at it."""
    return _train(
        str(PREPARED_LLM),
        dataset,
        store,
        tmp_path_factory.mktemp("qlora") / "run",
        "qlora-cpu",
        recipe=recipe(qlora=True, max_steps=2),
    )


@pytest.mark.slow
@pytest.mark.models
def test_qlora_trains_the_packaged_model_on_the_cpu(qlora_run: TrainResult, store: Path) -> None:
    assert qlora_run.qlora is True and qlora_run.device == "cpu" and qlora_run.steps == 2
    assert math.isfinite(qlora_run.train_loss) and qlora_run.train_loss > 0
    assert qlora_run.peak_memory_mb > 0 and qlora_run.tokens > 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "recipe.yaml"):
        assert (qlora_run.adapter_dir / name).is_file(), name
    config = json.loads((qlora_run.adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(PREPARED_LLM)
    run = MlflowClient(_uri(store)).get_run(qlora_run.run_id)
    assert run.info.status == "FINISHED" and run.data.params["device"] == "cpu"
    assert run.data.params["qlora_resolved"] == "True"
    assert run.data.params["qlora_reason"] == "the recipe sets qlora: true"


@pytest.mark.slow
@pytest.mark.models
def test_the_qlora_adapter_serves_over_the_unquantized_base(qlora_run: TrainResult) -> None:
    """As vLLM serves it: the plain bf16 base, no bitsandbytes layer, the adapter on top."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PREPARED_LLM)
    base = AutoModelForCausalLM.from_pretrained(PREPARED_LLM, dtype=torch.bfloat16)
    messages = [{"role": "user", "content": QUESTIONS[0][0]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        before = base(ids).logits.float()
        model = PeftModel.from_pretrained(base, str(qlora_run.adapter_dir)).eval()
        after = model(ids).logits.float()
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert not any("4bit" in type(module).__name__ for module in model.modules())
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-2
    assert out.shape[1] > ids.shape[1]
    assert tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_bad_dataset_or_output_folders_are_refused(
    tiny_llm: str, dataset: Path, store: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match=r"manifest\.json is missing"):
        _train(tiny_llm, tmp_path, store, tmp_path / "run", "bad-input")
    (tmp_path / "manifest.json").write_text('{"version": "x"}')
    with pytest.raises(FileNotFoundError, match=r"train\.parquet is missing"):
        _train(tiny_llm, tmp_path, store, tmp_path / "run", "bad-input")
    taken = tmp_path / "taken"
    (taken / "adapter").mkdir(parents=True)
    with pytest.raises(TrainingError, match="already exists"):
        _train(tiny_llm, dataset, store, taken, "bad-input")
    assert (taken / "adapter").is_dir()  # what was there is kept
    with pytest.raises(TrainingError, match="no training example that fits"):
        _train(
            tiny_llm, dataset, store, tmp_path / "run", "bad-input", recipe=recipe(max_seq_length=8)
        )
    assert _runs(store, "bad-input") == []


# --- the benchmark ---------------------------------------------------------------------------


def test_the_benchmark_paths_train_the_same_tokens(tiny_llm: str, tmp_path: Path) -> None:
    """The asset path and the bare loop see the same batches (the full run: the packaged
    SmolLM2 on every sample example, several steps, each run in its own process)."""
    pairs = finetune_benchmark.incident_pairs(SAMPLE_DIR / "incidents.jsonl")
    assert len(pairs) >= 150 and all(question and answer for question, answer in pairs)
    dataset_dir = finetune_benchmark.sample_dataset(tmp_path / "datasets", SAMPLE_DIR, tiny_llm, 30)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert sum(manifest["counts"]["split"].values()) == 30
    bench = recipe(max_steps=2, learning_rate=2e-4)
    bare = finetune_benchmark.bare_peft_loop(bench, dataset_dir, tiny_llm)
    ours = finetune_benchmark.asset_path(bench, dataset_dir, tiny_llm, tmp_path)
    assert bare["tokens"] == ours["tokens"] > 0
    assert bare["tokens_per_s"] > 0 and ours["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="steps need more than the"):
        finetune_benchmark.bare_peft_loop(recipe(max_steps=100), dataset_dir, tiny_llm)


@pytest.mark.slow
@pytest.mark.models
def test_the_benchmark_measures_every_figure_on_a_small_run(tiny_llm: str, state_dir: Path) -> None:
    settings = live_settings(state_dir).model_copy(update={"base_model": tiny_llm})
    figures = finetune_benchmark.run(rounds=1, steps=2, examples=60, settings=settings, demo=False)
    assert figures["name"] == "finetune" and figures["machine"]["cpu_count"]
    assert figures["same_tokens_asset_vs_bare"] is True and figures["tokens_per_run"] > 0
    for key in (
        "tokens_per_s_asset",
        "tokens_per_s_bare",
        "peak_memory_mb_asset",
        "peak_memory_mb_bare",
        "ratio_asset_vs_bare_tokens_per_s",
        "ratio_asset_vs_bare_peak_memory",
        "tokens_per_s_qlora",
        "peak_memory_mb_qlora",
        "peak_memory_mb_reported_qlora",
        "ratio_qlora_peak_memory",
        "ratio_qlora_tokens_per_s",
    ):
        assert figures[key] > 0, key
    assert figures["same_tokens_qlora_vs_lora"] is True and figures["qlora_trained_qlora"] is True
