"""The challenger, the champion and the base model measured the same way, side by side.

On the dataset's eval split: the mean loss on the reference completion tokens (and its
perplexity), and ROUGE-L of greedy answers against the reference. On the first golden agent
questions: the real assistant, serving each candidate in turn on a frozen state, scored as
`agent_benchmark` scores it. The base model loads once (the shared transformers backend) and
every adapter is added to it under its own name, so switching candidates never reloads weights.
A candidate whose adapter does not load is reported as failed; it never crashes the report.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dagster_platform.finetune import training
from dagster_platform.finetune.gate import METRIC_DIRECTIONS, CandidateMetrics, GateConfig
from dagster_platform.knowledge.tokens import tokenize
from dagster_platform.lib import charts
from dagster_platform.lib.logs import get_logger
from dagster_platform.llm.base import AdapterInfo, Backend, LLMError
from dagster_platform.llm.registry import CHALLENGER, CHAMPION, AdapterRegistry
from dagster_platform.llm.transformers_backend import TransformersBackend, shared_backend
from dagster_platform.settings import Settings

if TYPE_CHECKING:
    from dagster_platform.agents.evaluation import AgentCase

log = get_logger(__name__)

CandidateName = Literal["challenger", "champion", "base"]
CANDIDATE_NAMES = ("challenger", "champion", "base")
AGENT_METRICS = ("routing_accuracy", "tool_call_accuracy", "tool_call_precision", "grounding")
HEADLINE_METRIC = "headline_pass_rate"  # on held-out questions: the model's headline passed
EXPERIMENT = "adapter_evaluation"


class EvaluationError(ValueError):
    """The evaluation cannot start (no usable eval rows, bad candidates); nothing was scored."""


@dataclass(frozen=True)
class Candidate:
    name: CandidateName
    adapter: AdapterInfo | None  # None: the base model
    version: str | None = None
    error: str | None = None  # known before scoring, e.g. its download held no adapter


@dataclass
class EvaluationReport:
    candidates: list[CandidateMetrics]
    loss_examples: int
    dropped_examples: int  # eval rows whose completion did not fit max_seq_length
    generated_examples: int
    max_new_tokens: int
    agent_cases: int
    headline_cases: int = 0

    def get(self, name: str) -> CandidateMetrics | None:
        return next((c for c in self.candidates if c.name == name), None)

    def incumbent(self) -> CandidateMetrics:
        """What the challenger must beat: the champion, or the base model when there is no
        champion (or it could not be evaluated, so the base model is what serves)."""
        champion = self.get("champion")
        if champion is not None and champion.error is None:
            return champion
        base = self.get("base")
        if base is None:
            raise EvaluationError("the report has neither a champion nor the base model")
        return base

    def _metric_names(self) -> list[str]:
        measured = {m for c in self.candidates for m in c.metrics}
        return [m for m in METRIC_DIRECTIONS if m in measured]

    def markdown(self, chart_uri: str | None = None) -> str:
        """A table, metrics by candidate, with the challenger's difference to each other one."""
        others = [c for c in self.candidates if c.name != "challenger"]
        challenger = self.get("challenger")
        header = ["metric", *(c.label for c in self.candidates)]
        if challenger is not None:
            header += [f"Δ vs {c.label}" for c in others]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for metric in self._metric_names():
            arrow = "↓" if METRIC_DIRECTIONS[metric] == "lower" else "↑"
            cells = [f"{metric} {arrow}", *(_cell(c, metric) for c in self.candidates)]
            if challenger is not None:
                cells += [_delta(challenger, other, metric) for other in others]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            f"Loss on {self.loss_examples} eval examples ({self.dropped_examples} too long to "
            f"score), ROUGE-L on {self.generated_examples} greedy answers of at most "
            f"{self.max_new_tokens} tokens, agent metrics on {self.agent_cases} golden questions, "
            f"the headline pass rate on {self.headline_cases} held-out golden questions."
        )
        for candidate in self.candidates:
            if candidate.error:
                lines.append(f"\n**{candidate.label} failed:** {candidate.error}")
        if chart_uri:
            lines.append(f"\n![evaluation]({chart_uri})")
        return "\n".join(lines)

    def chart_png(self) -> bytes:
        """One bar chart per metric (their scales differ), a bar per evaluated candidate."""
        names = self._metric_names()
        scored = [c for c in self.candidates if c.error is None]
        columns = max(len(names), 1)
        with charts.figure(
            nrows=1, ncols=columns, figsize=(2.4 * columns, 3.0), dpi=100, squeeze=False
        ) as (plt, drawn, axes):
            palette = plt.get_cmap("tab10")
            for axis, metric in zip(axes[0], names, strict=False):
                values = [c.metrics.get(metric, 0.0) for c in scored]
                axis.bar(
                    range(len(scored)),
                    values,
                    color=[palette(CANDIDATE_NAMES.index(c.name) % 10) for c in scored],
                )
                axis.set_xticks(range(len(scored)), [c.label for c in scored], rotation=30)
                arrow = "lower is better" if METRIC_DIRECTIONS[metric] == "lower" else "higher"
                axis.set_title(f"{metric}\n({arrow})", fontsize=9)
                axis.tick_params(labelsize=7)
            if not names:
                axes[0][0].text(0.5, 0.5, "no candidate could be evaluated", ha="center")
                axes[0][0].axis("off")
            drawn.tight_layout()
            return charts.png(drawn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "loss_examples": self.loss_examples,
            "dropped_examples": self.dropped_examples,
            "generated_examples": self.generated_examples,
            "max_new_tokens": self.max_new_tokens,
            "agent_cases": self.agent_cases,
            "headline_cases": self.headline_cases,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        return cls(
            candidates=[CandidateMetrics(**c) for c in data["candidates"]],
            **{k: int(v) for k, v in data.items() if k != "candidates"},
        )


def _cell(candidate: CandidateMetrics, metric: str) -> str:
    if candidate.error:
        return "failed"
    value = candidate.metrics.get(metric)
    return "-" if value is None else f"{value:.4f}"


def _delta(challenger: CandidateMetrics, other: CandidateMetrics, metric: str) -> str:
    mine, theirs = challenger.metrics.get(metric), other.metrics.get(metric)
    if mine is None or theirs is None:
        return "-"
    return f"{mine - theirs:+.4f}"


class _RougeTokenizer:
    """rouge-score's default tokenizer drops every non-ASCII character, so Korean answers
    would all score alike; the knowledge base's tokens (Hangul bigrams) keep them."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 of each prediction against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RougeTokenizer())
    scores = [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return sum(scores) / len(scores) if scores else 0.0


def encode_example(
    tokenizer: Any, prompt: str, completion: str, max_seq_length: int
) -> tuple[list[int], int] | None:
    """Token ids of prompt + completion + eos cut as training cuts them, and the prompt's
    length; None when nothing of the completion fits."""
    encoded = training.encode_example(tokenizer, prompt, completion, max_seq_length)
    if encoded is None:
        return None
    return encoded["input_ids"], encoded["labels"].count(training.IGNORE_INDEX)


def completion_loss(
    backend: TransformersBackend, adapter: str | None, encoded: Sequence[tuple[list[int], int]]
) -> float:
    """Mean cross-entropy per completion token, over every example's completion tokens."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with backend.serving(adapter) as model, torch.inference_mode():
        for ids, prompt_length in encoded:
            targets = torch.tensor(ids[max(prompt_length, 1) :])
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=len(targets) + 1).logits[
                0, :-1
            ]
            total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            count += len(targets)
    return total / count


def generate(
    backend: TransformersBackend,
    adapter: str | None,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers to the formatted prompts (the exact text the adapter was trained on)."""
    import torch

    tokenizer = backend.tokenizer
    answers: list[str] = []
    with backend.serving(adapter) as model, torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
            width = inputs["input_ids"].shape[1]
            answers += [
                tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output
            ]
    return answers


def _check(candidates: Sequence[Candidate], eval_rows: Sequence[dict[str, Any]]) -> None:
    names = [c.name for c in candidates]
    unknown = sorted(set(names) - set(CANDIDATE_NAMES))
    if unknown or len(set(names)) != len(names):
        raise EvaluationError(
            f"candidates must be distinct names among {CANDIDATE_NAMES}; got {names}"
        )
    if not eval_rows:
        raise EvaluationError("the eval split is empty: nothing to evaluate the adapters on")
    missing = {"prompt", "completion"} - set(eval_rows[0])
    if missing:
        raise EvaluationError(f"eval rows lack the column(s) {sorted(missing)}")


class _AgentBench:
    """The golden questions through the real assistant pinned to one candidate, each run on
    the frozen warehouse as it was before the first (a candidate's kill proposals and
    interactions never change what the next one sees). The assistant answers through the
    serving engine the platform answers with: the vLLM server when it is configured (each
    candidate loaded into it while it is scored), else the in-process backend."""

    def __init__(
        self, settings: Settings, backend: TransformersBackend, base_model: str, folder: Path
    ):
        from dagster_platform.llm.service import LLMConfig, make_backend

        self.settings = settings
        configured = LLMConfig.from_settings(settings)
        if configured.backend == "vllm-server":
            self.backend: Backend = make_backend(configured)
            self.llm_config = configured
        else:
            self.backend = backend
            self.llm_config = replace(configured, backend="transformers", base_model=base_model)
        self.pristine = folder / "warehouse.duckdb"
        shutil.copyfile(settings.warehouse_path, self.pristine)

    def restore(self) -> None:
        wal = self.settings.warehouse_path.with_name(f"{self.settings.warehouse_path.name}.wal")
        wal.unlink(missing_ok=True)
        shutil.copyfile(self.pristine, self.settings.warehouse_path)

    def scores(
        self,
        adapter: AdapterInfo | None,
        cases: Sequence[AgentCase],
        headline_cases: Sequence[AgentCase] = (),
    ) -> dict[str, float]:
        from dagster_platform.agents.assistant import Assistant
        from dagster_platform.agents.evaluation import metrics, run_cases
        from dagster_platform.llm.client import LLMClient
        from dagster_platform.llm.service import PinnedLLMService

        self.restore()
        client = LLMClient(self.backend, self.llm_config.policy)
        service = PinnedLLMService(self.llm_config, client, adapter)
        assistant = Assistant.open(self.settings, llm=service)
        try:
            results = run_cases(assistant, cases)
            held_out = run_cases(assistant, headline_cases) if headline_cases else []
        finally:
            assistant.close()
            if self.backend.name == "vllm-server":  # the candidate leaves the server's slots
                client.serve_adapter(None)
        if service.warning:
            raise LLMError(service.warning)
        measured = metrics(results)
        scores = {name: float(measured[name]) for name in AGENT_METRICS} if results else {}
        if held_out:
            scores[HEADLINE_METRIC] = float(metrics(held_out)[HEADLINE_METRIC])
        return scores


def evaluate_candidates(
    candidates: list[Candidate],
    eval_rows: list[dict[str, Any]],
    *,
    base_model_path: str | Path,
    config: GateConfig,
    agent_cases: Sequence[AgentCase] | None = None,
    assistant_settings: Settings | None = None,
    headline_cases: Sequence[AgentCase] | None = None,
) -> EvaluationReport:
    """Score every candidate on the eval split (and the golden questions when both
    `agent_cases` and the frozen state's `assistant_settings` are given; `headline_cases`,
    questions no training example asked, for the headline pass rate)."""
    _check(candidates, eval_rows)
    if (agent_cases or headline_cases) and assistant_settings is None:
        raise EvaluationError("agent cases need assistant_settings (a frozen state) to run on")
    sizes = config.evaluation
    backend = shared_backend(str(base_model_path))
    tokenizer = backend.tokenizer
    scored_rows = eval_rows[: sizes.max_loss_examples]
    encoded = [
        e
        for row in scored_rows
        if (e := encode_example(tokenizer, row["prompt"], row["completion"], sizes.max_seq_length))
    ]
    if not encoded:
        raise EvaluationError(
            f"none of {len(scored_rows)} eval rows fits max_seq_length {sizes.max_seq_length}"
        )
    generated_rows = eval_rows[: sizes.max_eval_examples]
    cases = list(agent_cases or [])[: sizes.agent_cases]
    held_out = list(headline_cases or [])[: sizes.headline_cases]
    loaded: dict[str, AdapterInfo] = {}
    results: list[CandidateMetrics] = []
    with tempfile.TemporaryDirectory(prefix="adapter-evaluation-") as folder:
        bench = (
            _AgentBench(assistant_settings, backend, str(base_model_path), Path(folder))
            if (cases or held_out) and assistant_settings is not None
            else None
        )
        try:
            errors = {c.name: c.error for c in candidates if c.error}
            for candidate in candidates:
                if candidate.adapter is None or candidate.name in errors:
                    continue
                name = f"eval-{candidate.name}-{uuid.uuid4().hex[:8]}"
                try:
                    backend.load_adapter(name, candidate.adapter.path)
                except LLMError as exc:
                    errors[candidate.name] = str(exc)
                    continue
                loaded[candidate.name] = replace(candidate.adapter, name=name)
            for candidate in candidates:
                if candidate.name in errors:
                    results.append(
                        CandidateMetrics(
                            candidate.name, candidate.version, {}, errors[candidate.name]
                        )
                    )
                    log.warning(
                        "candidate not evaluated",
                        extra={"candidate": candidate.name, "error": errors[candidate.name]},
                    )
                    continue
                results.append(
                    _score(
                        candidate,
                        loaded.get(candidate.name),
                        backend,
                        encoded,
                        generated_rows,
                        config,
                        bench,
                        cases,
                        held_out,
                    )
                )
        finally:
            for adapter in loaded.values():
                backend.unload_adapter(adapter.name)
            if bench is not None:
                bench.restore()
    return EvaluationReport(
        results,
        loss_examples=len(encoded),
        dropped_examples=len(scored_rows) - len(encoded),
        generated_examples=len(generated_rows),
        max_new_tokens=sizes.max_new_tokens,
        agent_cases=len(cases) if bench is not None else 0,
        headline_cases=len(held_out) if bench is not None else 0,
    )


def _score(
    candidate: Candidate,
    adapter: AdapterInfo | None,
    backend: TransformersBackend,
    encoded: Sequence[tuple[list[int], int]],
    generated_rows: Sequence[dict[str, Any]],
    config: GateConfig,
    bench: _AgentBench | None,
    cases: Sequence[AgentCase],
    held_out: Sequence[AgentCase] = (),
) -> CandidateMetrics:
    """One candidate's metrics; a failure while scoring marks it failed instead of raising."""
    sizes = config.evaluation
    name = None if adapter is None else adapter.name
    try:
        loss = completion_loss(backend, name, encoded)
        answers = generate(
            backend,
            name,
            [r["prompt"] for r in generated_rows],
            sizes.max_new_tokens,
            sizes.batch_size,
        )
        measured = {
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "rouge_l": rouge_l(answers, [r["completion"] for r in generated_rows]),
        }
        if bench is not None:
            measured.update(bench.scores(adapter, cases, held_out))
    except RuntimeError as exc:  # torch's errors and LLMError alike
        log.warning("candidate evaluation failed", extra={"candidate": candidate.name})
        return CandidateMetrics(candidate.name, candidate.version, {}, f"evaluation failed: {exc}")
    log.info("candidate evaluated", extra={"candidate": candidate.name, **measured})
    return CandidateMetrics(candidate.name, candidate.version, measured)


def registry_candidates(
    registry: AdapterRegistry, adapters_dir: Path, challenger: str = CHALLENGER
) -> list[Candidate]:
    """The challenger (a version or an alias), the champion when it is another version, and
    the base model; a version whose download holds no adapter is a failed candidate."""
    chosen = registry.get(challenger) if challenger.isdigit() else registry.by_alias(challenger)
    if chosen is None:
        raise EvaluationError(f"{registry.registered_model} has no {challenger} to evaluate")
    champion = registry.by_alias(CHAMPION)
    wanted: list[tuple[CandidateName, str]] = [("challenger", chosen.version)]
    if champion is not None and champion.version != chosen.version:
        wanted.append(("champion", champion.version))
    candidates = []
    for name, version in wanted:
        try:
            candidates.append(
                Candidate(name, registry.local_adapter(version, adapters_dir), version)
            )
        except LLMError as exc:
            candidates.append(Candidate(name, None, version, error=str(exc)))
    return [*candidates, Candidate("base", None)]


def log_evaluation(
    report: EvaluationReport,
    tracking_uri: str,
    artifact_root: Path,
    tags: dict[str, str] | None = None,
) -> str:
    """A run in the `adapter_evaluation` experiment: the versions as parameters, each
    candidate's metrics prefixed by its name, the report and the chart as artifacts."""

    from dagster_platform.lib.tracking import log_run

    params: dict[str, object] = {f"{c.name}_version": c.version or "-" for c in report.candidates}
    params.update(
        loss_examples=report.loss_examples,
        generated_examples=report.generated_examples,
        max_new_tokens=report.max_new_tokens,
        agent_cases=report.agent_cases,
        headline_cases=report.headline_cases,
    )
    challenger = report.get("challenger")
    run = log_run(
        tracking_uri,
        EXPERIMENT,
        run_name=f"evaluate {challenger.label if challenger else 'candidates'}",
        params=params,
        metrics={f"{c.name}.{k}": v for c in report.candidates for k, v in c.metrics.items()},
        texts={
            "evaluation.md": report.markdown(chart_uri="evaluation.png"),
            "evaluation.json": json.dumps(report.to_dict(), indent=2),
        },
        tags={
            **(tags or {}),
            **{f"{c.name}.error": c.error[:4000] for c in report.candidates if c.error},
        },
        files={"evaluation.png": report.chart_png()},
        artifact_root=artifact_root,
    )
    return run.run_id
