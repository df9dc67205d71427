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
- Serving: against a real local vLLM server the benchmark starts (the shared environment of
  `dagster-platform vllm install`, a private run folder, a free port; stopped at the end):
  - single stream: tokens/s through our `VLLMServerBackend` + `LLMClient` against our
    transformers backend and against a bare OpenAI-client call (the openai package, run by the
    vLLM environment's python in a subprocess that times its own calls), the same prompts and
    settings (greedy, NEW_TOKENS), interleaved prompt by prompt, medians of the rounds; tokens
    are the server's `usage.completion_tokens` (the transformers backend counts its own);
  - vLLM alone at 1 and 8 requests at once: the ceiling batching gives on this machine;
  - its idle CPU: every process of the server, 20 s with no requests, as a share of one core;
  - concurrent API questions: the real app (`create_app`) over the frozen state, served by
    uvicorn on a thread of this process and asked over HTTP (httpx) from 1, 4 and 8 threads,
    the same questions at each level; tokens are vLLM's `vllm:generation_tokens_total` before
    and after (routing, planning and headline generations alike), over the level's wall time;
    beside them what bounds them: the prompt tokens per answer, the share of an answer's time
    vLLM worked on it (its own end-to-end request latency) and the CPU seconds per answer of
    the API process and the server;
  - promotion: `promote` returning, to the first answer from the new adapter through a second
    LLMService, as the API process has its own; the worse of two paths: the service reading the
    registry (as the vLLM test does), and one still naming the adapter the promotion unloaded
    from the shared server (it recovers by itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import uvicorn
import yaml

from benchmarks.common import machine
from dagster_platform.agents.assistant import Assistant, AssistantConfig
from dagster_platform.agents.classifier import RouteClassifier, load_routes
from dagster_platform.agents.frozen import build_frozen_state
from dagster_platform.agents.router import Router, routing_prompt
from dagster_platform.api.app import create_app
from dagster_platform.finetune.gate import DEFAULT_GATE, CandidateMetrics, GateConfig, decide
from dagster_platform.finetune.promotion import promote
from dagster_platform.kafka.broker import free_port
from dagster_platform.knowledge.embeddings import Embedder
from dagster_platform.lib.warehouse import open_warehouse
from dagster_platform.llm.base import GenerationConfig, Message
from dagster_platform.llm.client import LLMClient, ResiliencePolicy
from dagster_platform.llm.registry import AdapterRegistry
from dagster_platform.llm.service import (
    LLMConfig,
    LLMService,
    local_vllm_server,
    make_backend,
    resolve_base_model,
)
from dagster_platform.llm.transformers_backend import TransformersBackend, shared_backend
from dagster_platform.llm.vllm_local import LocalVLLMServer, VLLMEnvironment, VLLMError
from dagster_platform.llm.vllm_server import VLLMServerBackend
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

    def ours(messages: Sequence[Message]) -> Timed:
        started = time.perf_counter()
        completion = client.chat(messages, config)
        return Timed(completion.completion_tokens, time.perf_counter() - started, completion.text)

    def bare(messages: Sequence[Message]) -> Timed:
        started = time.perf_counter()
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
        answer = tokenizer.decode(generated, skip_special_tokens=True).strip()
        return Timed(_counted(generated, tokenizer), time.perf_counter() - started, answer)

    # interleaved prompt by prompt, so a load swing on the machine hits both paths
    rates, tokens, texts = interleaved(
        {"ours": ours, "bare": bare}, conversations, rounds, label="generation"
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


# --- serving: a real local vLLM server -------------------------------------------------------

CONCURRENCY = (1, 4, 8)
API_QUESTIONS = 8  # every concurrency level asks these same questions
DIRECT_WAVES = 2
IDLE_S = 20.0
SETTLE_S = 2.0
GENERATION_COUNTER = "vllm:generation_tokens_total"
PROMPT_COUNTER = "vllm:prompt_tokens_total"
REQUEST_SECONDS = "vllm:e2e_request_latency_seconds_sum"
VLLM_COUNTERS = (GENERATION_COUNTER, PROMPT_COUNTER, REQUEST_SECONDS)
BENCH_KEYS = {"bench": "bench-llm-key-0123456789"}
REGISTERED_MODEL = "bench-ops-assistant"
PROMOTION_QUESTION = (
    Message("system", "Answer in one short sentence."),
    Message("user", "What is Kafka?"),
)
PROMOTION_CONFIG = GenerationConfig(max_new_tokens=16)
BARE_OPENAI_SCRIPT = """
import json, sys, time
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0, timeout=600)
for line in sys.stdin:
    started = time.perf_counter()
    answer = client.chat.completions.create(**json.loads(line))
    seconds = time.perf_counter() - started
    text = answer.choices[0].message.content or ""
    print(json.dumps({"seconds": seconds, "tokens": answer.usage.completion_tokens,
                      "text": text}), flush=True)
"""


class ServingUnavailable(RuntimeError):
    """The serving section cannot run on this machine; the message says how to fix it."""


@dataclass(frozen=True)
class Timed:
    """One answer: completion tokens (the server's `usage`, or the backend's count), the
    seconds it took and its text."""

    tokens: int
    seconds: float
    text: str


Ask = Callable[[Sequence[Message]], Timed]


def tokens_per_s(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def cpu_spent(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds a process tree spent between two readings; a process that appeared in
    between counts from zero, one that ended is left out."""
    return sum(max(0.0, total - before.get(pid, 0.0)) for pid, total in after.items())


def cpu_share(before: Mapping[int, float], after: Mapping[int, float], seconds: float) -> float:
    """:func:`cpu_spent` over `seconds`, as a share of one core."""
    return cpu_spent(before, after) / seconds


def counter_total(exposition: str, name: str) -> float:
    """Every sample of a Prometheus counter in a text exposition, added up over its labels."""
    total = 0.0
    for line in exposition.splitlines():
        rest = line[len(name) :] if line.startswith(name) else ""
        if rest[:1] not in ("{", " "):
            continue
        if rest.startswith("{"):
            rest = rest[rest.rindex("}") + 1 :]
        total += float(rest.split()[0])
    return total


def vllm_counters(server: LocalVLLMServer) -> dict[str, float]:
    """vLLM's own totals since it started: tokens generated and read, seconds on requests."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    response.raise_for_status()
    return {name: counter_total(response.text, name) for name in VLLM_COUNTERS}


def generated_tokens(server: LocalVLLMServer) -> float:
    return vllm_counters(server)[GENERATION_COUNTER]


def serving_environment(settings: Settings) -> VLLMEnvironment:
    """The shared vLLM environment `dagster-platform vllm install` creates."""
    environment = local_vllm_server(settings).environment
    if not environment.ready():
        raise ServingUnavailable(
            f"the serving section needs the vLLM environment, not installed at "
            f"{environment.root}: run `dagster-platform vllm install` (a few minutes, once)"
        )
    return environment


@contextmanager
def private_vllm_server(settings: Settings, folder: Path) -> Iterator[LocalVLLMServer]:
    """The local server as `vllm start` runs it, from the shared environment, but on a free
    port with its pid and log in `folder`; stopped at the end, also on failure."""
    serving_environment(settings)
    server = replace(local_vllm_server(settings), run_dir=folder / "vllm", port=free_port())
    try:
        server.start(timeout=600)
        yield server
    finally:
        server.stop()


# single stream


class BareOpenAI:
    """The openai package's client in the vLLM environment's python (the project venv has no
    openai), one request per line on its stdin; it times its own calls, so neither its
    start-up nor our pipe is counted."""

    def __init__(self, python: Path, server: LocalVLLMServer, folder: Path):
        script, self._log = folder / "bare_openai.py", folder / "bare_openai.log"
        script.write_text(BARE_OPENAI_SCRIPT, encoding="utf-8")
        self.model = server.served_name
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [str(python), str(script), server.base_url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def ask(self, messages: Sequence[Message], max_tokens: int) -> Timed:
        """The body our backend sends for a greedy GenerationConfig, field for field."""
        request = {
            "model": self.model,
            "messages": [m.to_dict() for m in messages],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
        }
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            tail = self._log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the bare OpenAI client exited ({self._process.poll()}): {tail}")
        answer = json.loads(line)
        return Timed(int(answer["tokens"]), float(answer["seconds"]), answer["text"])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def timed_chat(client: LLMClient, config: GenerationConfig) -> Ask:
    def ask(messages: Sequence[Message]) -> Timed:
        started = time.perf_counter()
        completion = client.chat(messages, config)
        return Timed(completion.completion_tokens, time.perf_counter() - started, completion.text)

    return ask


def interleaved(
    paths: Mapping[str, Ask],
    conversations: Sequence[Sequence[Message]],
    rounds: int,
    label: str = "serving",
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, list[str]]]:
    """Tokens/s per round of each path, tokens per round and the first round's texts; the
    paths take turns prompt by prompt, the first of each turn rotating, after a warm-up."""
    names = list(paths)
    for ask in paths.values():
        ask(conversations[0])
    rates: dict[str, list[float]] = {name: [] for name in names}
    texts: dict[str, list[str]] = {name: [] for name in names}
    tokens: dict[str, int] = {}
    for round_ in range(rounds):
        counts, seconds = Counter[str](), Counter[str]()
        for number, messages in enumerate(conversations):
            turn = (round_ + number) % len(names)
            for name in names[turn:] + names[:turn]:
                answer = paths[name](messages)
                counts[name] += answer.tokens
                seconds[name] += answer.seconds
                if round_ == 0:
                    texts[name].append(answer.text)
        for name in names:
            rates[name].append(tokens_per_s(counts[name], seconds[name]))
            tokens[name] = counts[name]
        _progress(
            f"{label} round {round_ + 1}/{rounds}: "
            + ", ".join(f"{rates[n][-1]:.1f} tokens/s {n}" for n in names)
        )
    return rates, tokens, texts


def stream_figures(
    rates: Mapping[str, Sequence[float]],
    tokens: Mapping[str, int],
    texts: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """The single-stream figures of the three paths `vllm`, `bare_openai`, `transformers`."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    figures: dict[str, Any] = {}
    for name in ("vllm", "bare_openai", "transformers"):
        figures[f"serving_tokens_per_s_{name}"] = round(medians[name], 1)
        figures[f"serving_tokens_per_s_{name}_rounds"] = [round(x, 1) for x in rates[name]]
        figures[f"serving_tokens_per_round_{name}"] = tokens[name]
    figures["serving_same_output_vllm_vs_bare_openai"] = texts["vllm"] == texts["bare_openai"]
    figures["ratio_vllm_vs_transformers_tokens_per_s"] = round(
        medians["vllm"] / medians["transformers"], 3
    )
    figures["ratio_vllm_ours_vs_bare_openai"] = round(medians["vllm"] / medians["bare_openai"], 3)
    return figures


def vllm_client(server: LocalVLLMServer) -> LLMClient:
    return LLMClient(VLLMServerBackend(server.base_url, model=server.served_name, timeout_s=600))


def single_stream(
    server: LocalVLLMServer,
    base_model: str,
    folder: Path,
    rounds: int,
    new_tokens: int,
    prompts: Sequence[str] = PROMPTS,
) -> dict[str, Any]:
    """vLLM through our backend and client, the bare OpenAI client, and our transformers
    backend, one request at a time on the same prompts (greedy, `new_tokens` at most)."""
    conversations = [[Message("system", SYSTEM), Message("user", p)] for p in prompts]
    config = GenerationConfig(max_new_tokens=new_tokens)
    bare = BareOpenAI(server.environment.python, server, folder)
    try:
        paths = {
            "vllm": timed_chat(vllm_client(server), config),
            "bare_openai": lambda messages: bare.ask(messages, new_tokens),
            "transformers": timed_chat(LLMClient(shared_backend(base_model)), config),
        }
        rates, tokens, texts = interleaved(paths, conversations, rounds)
    finally:
        bare.close()
    return {
        "serving_prompts": len(conversations),
        "serving_rounds": rounds,
        **stream_figures(rates, tokens, texts),
    }


def direct_concurrency(
    server: LocalVLLMServer, new_tokens: int, levels: Sequence[int] = (1, 8)
) -> dict[str, Any]:
    """The server alone, `level` requests at once through our backend: what batching gives
    before any work of the assistant, the ceiling of the API's scaling."""
    client = vllm_client(server)
    config = GenerationConfig(max_new_tokens=new_tokens)
    conversations = [[Message("system", SYSTEM), Message("user", p)] for p in PROMPTS]
    rates = {}
    for level in levels:
        batch = [conversations[i % len(conversations)] for i in range(level)]
        tokens, seconds = 0, 0.0
        for _ in range(DIRECT_WAVES):
            started = time.perf_counter()
            tokens += sum(c.completion_tokens for c in client.chat_batch(batch, config))
            seconds += time.perf_counter() - started
        rates[level] = tokens_per_s(tokens, seconds)
    low, high = min(levels), max(levels)
    _progress(f"vLLM alone: {rates[low]:.1f} tokens/s at {low}, {rates[high]:.1f} at {high}")
    return {
        "vllm_direct_tokens_per_s_by_concurrency": {str(k): round(v, 1) for k, v in rates.items()},
        f"ratio_vllm_direct_tokens_per_s_{high}_vs_{low}": round(rates[high] / rates[low], 2),
    }


# idle


def process_tree_cpu(pid: int) -> dict[int, float]:
    """User plus system CPU seconds of a process and each of its descendants, by pid."""
    root = psutil.Process(pid)
    found = {}
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


def idle_cpu(pid: int, seconds: float = IDLE_S, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """The server's processes, asked nothing for `seconds` (after `settle_s` of quiet)."""
    time.sleep(settle_s)
    before = process_tree_cpu(pid)
    started = time.monotonic()
    time.sleep(seconds)
    after = process_tree_cpu(pid)
    window = time.monotonic() - started
    share = cpu_share(before, after, window)
    _progress(f"vLLM idle: {share:.3f} of a core over {window:.0f} s")
    return {
        "vllm_processes": len(after),
        "vllm_idle_window_s": round(window, 1),
        "vllm_idle_cpu_share_of_a_core": round(share, 4),
    }


# concurrent API questions


@dataclass(frozen=True)
class Level:
    """One concurrency level of API questions: vLLM's generated tokens over the wall time,
    and what bounds them: the prompt tokens vLLM read, the time it spent on the requests (its
    own end-to-end latency, added up) and the CPU seconds of this process (the API) and of
    the server."""

    concurrency: int
    tokens: float
    seconds: float
    latencies_s: tuple[float, ...]
    degraded: int
    vllm_request_s: float = 0.0
    cpu_api_s: float = 0.0
    cpu_vllm_s: float = 0.0
    prompt_tokens: float = 0.0

    @property
    def answers(self) -> int:
        return len(self.latencies_s)


def api_figures(levels: Sequence[Level]) -> dict[str, Any]:
    """Aggregate tokens/s per level and the highest level's against the lowest; per answer,
    the seconds vLLM worked on it and the CPU seconds it cost each side."""
    rates = {level.concurrency: tokens_per_s(level.tokens, level.seconds) for level in levels}
    low, high = min(rates), max(rates)
    by = {str(level.concurrency): level for level in levels}
    first = by[str(low)]
    return {
        "api_questions_per_level": first.answers,
        "api_tokens_per_s_by_concurrency": {
            k: round(rates[v.concurrency], 1) for k, v in by.items()
        },
        "api_answers_per_s_by_concurrency": {
            k: round(v.answers / v.seconds, 3) for k, v in by.items()
        },
        "api_answer_p50_ms_by_concurrency": {
            k: round(statistics.median(v.latencies_s) * 1000) for k, v in by.items()
        },
        "api_generated_tokens_per_answer": round(first.tokens / first.answers, 1),
        "api_prompt_tokens_per_answer": round(first.prompt_tokens / first.answers, 1),
        f"api_vllm_share_of_answer_time_at_{low}": round(
            first.vllm_request_s / sum(first.latencies_s), 3
        ),
        "api_cpu_s_per_answer_by_concurrency": {
            k: {
                "api": round(v.cpu_api_s / v.answers, 2),
                "vllm": round(v.cpu_vllm_s / v.answers, 2),
            }
            for k, v in by.items()
        },
        "api_cpu_cores_busy_by_concurrency": {
            k: round((v.cpu_api_s + v.cpu_vllm_s) / v.seconds, 2) for k, v in by.items()
        },
        "api_degraded": sum(level.degraded for level in levels),
        f"ratio_tokens_per_s_{high}_vs_{low}": round(rates[high] / rates[low], 2),
    }


@contextmanager
def uvicorn_app(app: Any) -> Iterator[str]:
    """The app served by uvicorn on a free port, on a thread of this process; its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="bench-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark API did not start on port {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def ask_concurrently(
    url: str, questions: Sequence[str], concurrency: int, tag: str
) -> list[tuple[float, str]]:
    """Every question once over HTTP, `concurrency` in flight (each asker thread takes the next
    question when its answer comes), each in its own session; (seconds, status) each."""
    headers = {"X-API-Key": BENCH_KEYS["bench"]}

    def ask(number: int) -> tuple[float, str]:
        started = time.perf_counter()
        response = http.post(
            "/ask", json={"question": questions[number], "session_id": f"{tag}-{number}"}
        )
        if response.status_code != 200:
            raise RuntimeError(f"/ask answered {response.status_code}: {response.text[:500]}")
        return time.perf_counter() - started, response.json()["status"]

    with (
        httpx.Client(base_url=url, headers=headers, timeout=900) as http,
        ThreadPoolExecutor(concurrency, thread_name_prefix="bench-asker") as pool,
    ):
        return list(pool.map(ask, range(len(questions))))


def own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def api_level(server: LocalVLLMServer, url: str, questions: Sequence[str], level: int) -> Level:
    pid = server.process.running_pid()
    if pid is None:
        raise ServingUnavailable("the benchmark's vLLM server is not running any more")
    counters, tree, own = vllm_counters(server), process_tree_cpu(pid), own_cpu()
    started = time.perf_counter()
    answers = ask_concurrently(url, questions, level, f"bench-c{level}")
    seconds = time.perf_counter() - started
    cpu_api, tree_after = own_cpu() - own, process_tree_cpu(pid)
    time.sleep(0.5)  # the counters are updated as outputs are processed; let the last land
    after = vllm_counters(server)
    tokens = after[GENERATION_COUNTER] - counters[GENERATION_COUNTER]
    _progress(f"API at {level} concurrent: {tokens_per_s(tokens, seconds):.1f} tokens/s")
    return Level(
        concurrency=level,
        tokens=tokens,
        seconds=seconds,
        latencies_s=tuple(s for s, _ in answers),
        degraded=sum(status != "answered" for _, status in answers),
        vllm_request_s=after[REQUEST_SECONDS] - counters[REQUEST_SECONDS],
        cpu_api_s=cpu_api,
        cpu_vllm_s=cpu_spent(tree, tree_after),
        prompt_tokens=after[PROMPT_COUNTER] - counters[PROMPT_COUNTER],
    )


def api_settings(frozen: Settings, server: LocalVLLMServer, folder: Path) -> Settings:
    """The frozen state answered through the benchmark's server, from an empty registry (the
    base model serves, whatever the live registry's champion is)."""
    return frozen.model_copy(
        update={
            "llm_backend": "vllm-server",
            "vllm_base_url": server.base_url,
            "mlflow_tracking_uri": f"sqlite:///{folder / 'api-mlflow.db'}",
        }
    )


def api_throughput(
    settings: Settings,
    server: LocalVLLMServer,
    questions: Sequence[str],
    levels: Sequence[int] = CONCURRENCY,
) -> dict[str, Any]:
    """The same questions at each level, after one pass at the highest that loads the models
    and leaves every prompt in vLLM's prefix cache, so no level starts colder than another."""
    app = create_app(settings, api_keys=BENCH_KEYS, rate_limit="100000/minute")
    with uvicorn_app(app) as url:
        ask_concurrently(url, questions, max(levels), "bench-warm-up")
        return api_figures([api_level(server, url, questions, level) for level in levels])


# promotion


def build_lora(target: Path, base_model: str, seed: int, rank: int = 8) -> Path:
    """A LoRA of the base model (q and v projections, random B so it changes answers)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(target)
    return target


def _log_adapter_run(tracking_uri: str, folder: Path, adapter: Path) -> str:
    """A finished training run whose `adapter` artifact is `adapter`, as finetune leaves it."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name("finetune")
    experiment = (
        found.experiment_id
        if found
        else client.create_experiment("finetune", artifact_location=(folder / "art").as_uri())
    )
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(adapter), "adapter")
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def vllm_service(
    server: LocalVLLMServer,
    base_model: str,
    folder: Path,
    registered_model: str = REGISTERED_MODEL,
) -> LLMService:
    """A service as each process builds its own (the Dagster run, the API), on the registry
    in `folder`; its own registry check is an hour away."""
    config = LLMConfig(
        backend="vllm-server",
        base_model=base_model,
        registered_model=registered_model,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        adapters_dir=folder / "adapters",
        vllm_base_url=server.base_url,
        vllm_max_lora_rank=server.max_lora_rank,
        vllm_model=server.served_name,
        policy=ResiliencePolicy(retries=1, backoff_initial_s=0.2),
        check_interval_s=3600.0,
    )
    return LLMService(config, LLMClient(make_backend(config), config.policy))


def _promote(registry: AdapterRegistry, service: LLMService, version: str, folder: Path) -> float:
    """Promote `version` past the gate as the finetune job does; the seconds the call took."""
    challenger = CandidateMetrics("challenger", version, {"eval_loss": 1.0, "rouge_l": 0.5})
    base = CandidateMetrics("base", None, {"eval_loss": 3.0, "rouge_l": 0.4})
    started = time.perf_counter()
    done = promote(
        registry,
        decide(challenger, base, GateConfig.load(DEFAULT_GATE)),
        version,
        service,
        lambda: open_warehouse(folder / "promotions.duckdb"),
        "bench",
    )
    if done.action != "promoted":
        raise RuntimeError(f"v{version} was not promoted: {done.reasons}")
    return time.perf_counter() - started


def _first_answer_from(service: LLMService, adapter: str, refresh: bool) -> float:
    """Seconds until `service` answers from `adapter` (after reading the registry, or by
    recovering when the server no longer holds the adapter it served)."""
    started = time.perf_counter()
    if refresh:
        service.refresh()
    answer = service.client.chat(PROMOTION_QUESTION, PROMOTION_CONFIG)
    if answer.adapter != adapter:
        raise RuntimeError(f"the API answered from {answer.adapter}, not {adapter}")
    return time.perf_counter() - started


def promotion(server: LocalVLLMServer, base_model: str, folder: Path) -> dict[str, Any]:
    """Two adapters promoted in turn by one service; a second one (the API's) answers from
    each: from v1 after its first registry read (as the vLLM test does), from v2 while it
    still names v1, which the promotion unloaded from the shared server."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    registry = AdapterRegistry(uri, REGISTERED_MODEL)
    versions = [
        registry.register(
            _log_adapter_run(uri, folder, build_lora(folder / f"lora-{seed}", base_model, seed))
        ).version
        for seed in (1, 2)
    ]
    promoting = vllm_service(server, base_model, folder)
    api = vllm_service(server, base_model, folder)
    calls, firsts = [], []
    for version, refresh in zip(versions, (True, False), strict=True):
        calls.append(_promote(registry, promoting, version, folder))
        firsts.append(_first_answer_from(api, f"{REGISTERED_MODEL}-v{version}", refresh))
    _progress(f"promotion to first answer: {firsts[0]:.2f} s, then {firsts[1]:.2f} s")
    return {
        "promotion_call_s": [round(s, 2) for s in calls],
        "promotion_to_first_answer_s_by_path": {
            "first_registry_read": round(firsts[0], 2),
            "adapter_lost_recovered": round(firsts[1], 2),
        },
        "promotion_to_first_answer_s": round(max(firsts), 2),
    }


def serving_section(
    settings: Settings,
    folder: Path,
    questions: Sequence[Golden],
    rounds: int,
    new_tokens: int,
    embed: bool,
) -> dict[str, Any]:
    """Every serving figure against one private vLLM server, stopped at the end."""
    base_model = resolve_base_model(settings)
    with private_vllm_server(settings, folder) as server:
        pid = server.process.running_pid()
        _progress(f"serving: vLLM at {server.base_url}, pid {pid}")
        figures = single_stream(server, base_model, folder, rounds, new_tokens)
        if pid is not None:
            figures.update(idle_cpu(pid))
        figures.update(direct_concurrency(server, new_tokens))
        frozen = build_frozen_state(settings, folder / "frozen", embed=embed)
        asked = [g.question for g in questions[:API_QUESTIONS]]
        _progress(f"API: {len(asked)} questions at {', '.join(map(str, CONCURRENCY))} at once")
        figures.update(api_throughput(api_settings(frozen, server, folder), server, asked))
        figures.update(promotion(server, base_model, folder / "promotion"))
    return figures


def _serving_possible(settings: Settings) -> None:
    try:
        serving_environment(settings)
    except ServingUnavailable as exc:
        raise SystemExit(f"bench llm: {exc}") from None


def _serving_or_exit(
    settings: Settings,
    folder: Path,
    questions: Sequence[Golden],
    rounds: int,
    new_tokens: int,
    embed: bool,
) -> dict[str, Any]:
    """The serving section; a server that cannot start is a message, not a traceback."""
    try:
        return serving_section(settings, folder, questions, rounds, new_tokens, embed)
    except (ServingUnavailable, VLLMError) as exc:
        raise SystemExit(f"bench llm: serving: {exc}") from None


def run(
    rounds: int = ROUNDS,
    new_tokens: int = NEW_TOKENS,
    latency_questions: int | None = LATENCY_QUESTIONS,
    routing_questions: int | None = None,
    threads: int | None = None,
    embed: bool = True,
    settings: Settings | None = None,
    serving: bool = True,
) -> dict[str, Any]:
    """`latency_questions`/`routing_questions` cut the question lists (seed questions first);
    None asks them all. `embed=False` leaves the frozen knowledge base without vectors.
    `serving=False` leaves out the vLLM server's section; with it, a machine without the vLLM
    environment is told so at once (SystemExit, a message, no traceback)."""
    settings = settings or get_settings()
    if serving:
        _serving_possible(settings)
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
        if serving:
            figures.update(
                _serving_or_exit(settings, Path(folder), asked, rounds, new_tokens, embed)
            )
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
