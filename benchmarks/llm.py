"""The LLM and the agents on CPU: generation speed, routing accuracy and answer latency, in one
run.

- Generation: tokens/s of our transformers backend through the resilient `LLMClient` the agents
  use, against a bare `model.generate` on the same loaded weights, same prompts and settings
  (greedy, batch size 1, chat template applied), interleaved prompt by prompt for ROUNDS
  rounds, medians compared.
  Generated tokens are counted the same way for both (through the first end-of-sequence).
- Routing: the router (LLM label, calibrated, with the keyword and embedding classifier behind
  it) on the golden questions of data/sample/golden_questions.jsonl and data/golden/routing.yaml,
  deduplicated by text, against the LLM's label alone and the classifier alone.
- Latency: the golden questions of the sample asked end to end against a frozen state (the
  sample, never the live warehouse), each in its own session except the five seed-scenario
  questions, which share one in step order; with the LLM and without it (the floor).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import machine
from dagster_platform.agents.assistant import Assistant, AssistantConfig
from dagster_platform.agents.classifier import RouteClassifier, load_routes
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.router import Router, routing_prompt
from dagster_platform.knowledge.embeddings import Embedder
from dagster_platform.llm.base import GenerationConfig, Message
from dagster_platform.llm.client import LLMClient
from dagster_platform.llm.service import resolve_base_model
from dagster_platform.llm.transformers_backend import TransformersBackend
from dagster_platform.settings import REPO_ROOT, Settings, get_settings

ROUNDS = 3
NEW_TOKENS = 64
LATENCY_QUESTIONS = 20  # with the LLM, each answer takes seconds on a laptop CPU
SAMPLE_GOLDEN = "golden_questions.jsonl"
ROUTING_GOLDEN = REPO_ROOT / "data" / "golden" / "routing.yaml"
SYSTEM = (
    "You are an operations assistant for data-platform clusters. Answer the operator in two or "
    "three sentences using only the evidence. Quote numbers exactly as given."
)
PROMPTS: tuple[str, ...] = (
    "Question: Is etl-prod busier now than an hour ago?\nEvidence:\n- etl-prod: CPU 90.6% in "
    "the latest minute (60-min average 61.2%, up 29.4 points), memory 70.0%, 18 hosts reporting",
    "Question: Which Spark jobs use the most resources on etl-prod?\nEvidence:\n"
    "- application_1794712500000_0488 nightly_orders_etl: 192 vcores, 1152 GB, 45.0% of CPU\n"
    "- application_1794712500000_0492 payments_settlement: 160 vcores, 960 GB, 31.2% of CPU",
    "Question: 클러스터 가동율이 높을때 어떻게 해야되?\nEvidence:\n- passage rb-high-cpu: "
    '"Find the heaviest applications with `yarn top`; ask the on-call lead before killing one."',
    "Question: Stop the two Spark jobs using the most memory on staging.\nEvidence:\n- proposed "
    "kill of application_1794790800000_0044 and application_1794790800000_0047, awaiting "
    "approval by a person with the approver role",
)


def _progress(message: str) -> None:
    print(f"[bench llm] {message}", file=sys.stderr, flush=True)


# --- generation ------------------------------------------------------------------------------


def _counted(generated: torch.Tensor, tokenizer: Any) -> int:
    """Tokens generated, through the first end-of-sequence: what the backend reports as
    `completion_tokens`, computed the same way for the bare path."""
    finished = bool((generated == tokenizer.eos_token_id).any())
    kept = int((generated != tokenizer.pad_token_id).sum()) + int(finished)
    return min(kept, len(generated))


def generation(
    backend: TransformersBackend, client: LLMClient, rounds: int, new_tokens: int
) -> dict[str, Any]:
    """Ours (client → backend.chat) against bare generate, interleaved prompt by prompt;
    tokens/s per round over all prompts, medians of the rounds compared."""
    model, tokenizer = backend.torch_model, backend.tokenizer
    conversations = [[Message("system", SYSTEM), Message("user", p)] for p in PROMPTS]
    config = GenerationConfig(max_new_tokens=new_tokens)

    def ours(messages: list[Message]) -> tuple[int, str]:
        completion = client.chat(messages, config)
        return completion.completion_tokens, completion.text

    def bare(messages: list[Message]) -> tuple[int, str]:
        text = tokenizer.apply_chat_template(
            [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=True
        )
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        generated = output[0][inputs["input_ids"].shape[1] :]
        return _counted(generated, tokenizer), tokenizer.decode(
            generated, skip_special_tokens=True
        ).strip()

    paths = {"ours": ours, "bare": bare}
    for path in paths.values():  # warm up
        path(conversations[0])
    rates: dict[str, list[float]] = {name: [] for name in paths}
    texts: dict[str, list[str]] = {name: [] for name in paths}
    tokens: dict[str, int] = {}
    for round_ in range(rounds):
        counts, seconds = Counter[str](), Counter[str]()
        for number, messages in enumerate(conversations):
            # interleaved prompt by prompt, so a load swing on the machine hits both paths
            order = list(paths) if (round_ + number) % 2 == 0 else list(reversed(paths))
            for name in order:
                started = time.perf_counter()
                generated, text = paths[name](messages)
                seconds[name] += time.perf_counter() - started
                counts[name] += generated
                if round_ == 0:
                    texts[name].append(text)
        for name in paths:
            rates[name].append(counts[name] / seconds[name])
            tokens[name] = counts[name]
        _progress(
            f"generation round {round_ + 1}/{rounds}: {rates['ours'][-1]:.1f} tokens/s ours, "
            f"{rates['bare'][-1]:.1f} bare"
        )
    ours_tps, bare_tps = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    return {
        "generation_prompts": len(PROMPTS),
        "generation_rounds": rounds,
        "new_tokens": new_tokens,
        "tokens_per_round": tokens["ours"],
        "tokens_per_s_ours": round(ours_tps, 1),
        "tokens_per_s_bare": round(bare_tps, 1),
        "tokens_per_s_ours_rounds": [round(x, 1) for x in rates["ours"]],
        "tokens_per_s_bare_rounds": [round(x, 1) for x in rates["bare"]],
        "same_output_ours_vs_bare": texts["ours"] == texts["bare"]
        and tokens["ours"] == tokens["bare"],
        "ratio_tokens_per_s_ours_vs_bare": round(ours_tps / bare_tps, 3),
    }


# --- routing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Golden:
    question: str
    route: str
    seed_step: int | None  # 1-5 for the seed scenario's questions
    in_sample: bool  # in data/sample/golden_questions.jsonl, not only in routing.yaml


def golden_questions(data_dir: Path) -> list[Golden]:
    """Both golden sets, deduplicated by question text, the seed scenario first in step order,
    then the rest in file order (the sample's first); a question the two sets route
    differently is an error in the data."""
    lines = (data_dir / SAMPLE_GOLDEN).read_text(encoding="utf-8").splitlines()
    sample = [json.loads(line) for line in lines if line.strip()]
    routing = yaml.safe_load(ROUTING_GOLDEN.read_text(encoding="utf-8"))["questions"]
    steps = {r["question"].strip(): r["scenario_step"] for r in sample if r.get("scenario_step")}
    found: dict[str, Golden] = {}
    for record, in_sample in [*((r, True) for r in sample), *((r, False) for r in routing)]:
        text = record["question"].strip()
        known = found.setdefault(text, Golden(text, record["route"], steps.get(text), in_sample))
        if known.route != record["route"]:
            raise ValueError(f"{text!r} is routed to both {known.route} and {record['route']}")
    seeds = sorted((g for g in found.values() if g.seed_step), key=lambda g: g.seed_step or 0)
    return seeds + [g for g in found.values() if not g.seed_step]


def _llm_label(router: Router, question: str) -> str | None:
    """The model's own calibrated label, asked even where the router did not need to ask it."""
    if router.llm is None:
        return None
    choice = router.llm.choose(routing_prompt(router.routes, question), router.labels)
    probabilities = router.calibrated(choice.probabilities) if choice.probabilities else None
    return max(probabilities, key=probabilities.__getitem__) if probabilities else choice.label


def routing(router: Router, questions: Sequence[Golden]) -> dict[str, Any]:
    """The router's route, the LLM's label alone and the classifier's alone, per question."""
    router.route("warm up")
    right = Counter[str]()
    sources = Counter[str]()
    misses, timings = [], []
    for item in questions:
        started = time.perf_counter()
        decision = router.route(item.question)
        timings.append((time.perf_counter() - started) * 1000)
        sources[decision.source] += 1
        right["router"] += decision.route == item.route
        right["llm"] += _llm_label(router, item.question) == item.route
        right["classifier"] += decision.classification.route == item.route
        right["seed"] += item.seed_step is not None and decision.route == item.route
        if decision.route != item.route:
            misses.append(
                f"{item.question} → {decision.route} ({decision.source}), not {item.route}"
            )
    n = len(questions)
    accuracy = right["router"] / n
    llm_only = right["llm"] / n
    return {
        "routing_questions": n,
        "routing_accuracy": round(accuracy, 3),
        "routing_seed_correct": right["seed"],
        "routing_seed_questions": sum(q.seed_step is not None for q in questions),
        "routing_accuracy_llm_only": round(llm_only, 3),
        "routing_accuracy_classifier_only": round(right["classifier"] / n, 3),
        "routing_share_by_source": {s: round(c / n, 3) for s, c in sorted(sources.items())},
        "routing_p50_ms": round(statistics.median(timings), 1),
        "routing_misses": misses,
        "ratio_routing_router_vs_llm_only": round(accuracy / llm_only, 3) if llm_only else None,
    }


# --- end-to-end latency ----------------------------------------------------------------------


def _ask_all(assistant: Assistant, questions: Sequence[Golden]) -> tuple[list[float], int]:
    """Milliseconds per answer, and how many answers were degraded."""
    seed_session = "bench-seed-scenario"
    timings, degraded = [], 0
    for item in questions:
        session = seed_session if item.seed_step is not None else None
        started = time.perf_counter()
        answer = assistant.ask(item.question, session)
        timings.append((time.perf_counter() - started) * 1000)
        degraded += answer.interaction.status == "degraded"
    return timings, degraded


def latency_subset(questions: Sequence[Golden], limit: int | None) -> list[Golden]:
    """The seed scenario's questions first, then the others evenly spaced over the file (it is
    ordered by route), `limit` in all; None: every question."""
    if limit is None or limit >= len(questions):
        return list(questions)
    seeds = [g for g in questions if g.seed_step][:limit]
    others = [g for g in questions if not g.seed_step]
    wanted = limit - len(seeds)
    return seeds + [others[i * len(others) // wanted] for i in range(wanted)]


def _percentile(values: Sequence[float], share: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def latency(
    settings: Settings, folder: Path, questions: Sequence[Golden], embed: bool
) -> dict[str, Any]:
    """Every question with the LLM, then without it, each pass on the frozen state as built."""
    figures: dict[str, Any] = {}
    for use_llm, suffix in ((True, ""), (False, "_no_llm")):
        frozen = build_frozen_state(settings, folder, embed=embed)  # restores it as built
        assistant = Assistant.open(frozen, use_llm=use_llm)
        try:
            assistant.ask("etl-prod 클러스터 호스트 상태 알려줘", "bench-warm-up")  # loads models
            timings, degraded = _ask_all(assistant, questions)
            if assistant.llm is not None:
                figures["latency_served"] = assistant.llm.client.served.label
        finally:
            assistant.close()
        figures[f"latency_p50_ms{suffix}"] = round(statistics.median(timings), 1)
        figures[f"latency_p95_ms{suffix}"] = round(_percentile(timings, 0.95), 1)
        figures[f"latency_degraded{suffix}"] = degraded
        _progress(
            f"latency {'with' if use_llm else 'without'} the LLM: "
            f"p50 {figures[f'latency_p50_ms{suffix}']} ms"
        )
    figures["ratio_latency_p50_llm_vs_no_llm"] = round(
        figures["latency_p50_ms"] / figures["latency_p50_ms_no_llm"], 2
    )
    return figures


def run(
    rounds: int = ROUNDS,
    new_tokens: int = NEW_TOKENS,
    latency_questions: int | None = LATENCY_QUESTIONS,
    routing_questions: int | None = None,
    threads: int | None = None,
    embed: bool = True,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """`latency_questions`/`routing_questions` cut the question lists (seed questions first);
    None asks them all. `embed=False` leaves the frozen knowledge base without vectors."""
    settings = settings or get_settings()
    load_before = os.getloadavg()[0]
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    golden = golden_questions(settings.data_dir)
    base_model = resolve_base_model(settings)
    backend = TransformersBackend(base_model)
    client = LLMClient(backend)
    _progress(f"generation: {len(PROMPTS)} prompts, {rounds} rounds, {new_tokens} new tokens")
    figures: dict[str, Any] = {"name": "llm", **generation(backend, client, rounds, new_tokens)}
    routes = load_routes()
    embedder = Embedder.from_name(settings.embedding_model, settings.models_dir)
    router = Router(
        routes,
        RouteClassifier(routes, embedder.encode),
        client,
        AssistantConfig().router_min_confidence,
    )
    _progress("routing the golden questions")
    figures.update(routing(router, golden[:routing_questions]))
    del router, client, backend  # the assistant loads its own copy of the weights
    asked = latency_subset([g for g in golden if g.in_sample], latency_questions)
    _progress(f"latency: {len(asked)} questions, frozen state in a temporary folder")
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as folder:
        figures.update(latency(settings, Path(folder) / "frozen", asked, embed))
    figures.update(
        {
            "questions": len(asked),
            "latency_subset": "all of golden_questions.jsonl"
            if len(asked) == sum(g.in_sample for g in golden)
            else "the seed scenario, then others evenly spaced in file order",
            "model": Path(base_model).name,
            "torch_threads": threads,
            "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "machine": machine(),
        }
    )
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), ensure_ascii=False))
