"""The knowledge group: chunks of runbooks, incidents and ontology objects; their embeddings in
chroma beside a BM25 index; and retrieval measured on the golden questions.

Embedding is the expensive step, so `chunk_embeddings` embeds only chunks whose content hash
changed and deletes the ones that disappeared; the store can be rebuilt from `document_chunks`
at any time (a corrupted chroma folder is set aside and rebuilt on the next materialization).
"""

import time
from collections import Counter

import dagster as dg
import polars as pl

from dagster_platform.knowledge.base import (
    fingerprint,
    lexical_index,
    open_retriever,
    store_records,
)
from dagster_platform.knowledge.documents import ChunkSet, build_chunks, read_chunks, write_chunks
from dagster_platform.knowledge.evaluation import (
    evaluate,
    load_golden,
    metrics,
    score_of,
    scores_table,
)
from dagster_platform.knowledge.lexical import LexicalIndex
from dagster_platform.knowledge.retriever import MODES, HybridRetriever
from dagster_platform.knowledge.tokens import whitespace_tokenize
from dagster_platform.lib.markdown import markdown_table
from dagster_platform.lib.tracking import log_run
from resources import (
    VECTOR_STORE_POOL,
    WAREHOUSE_POOL,
    DataFolderResource,
    KnowledgeResource,
    MLflowResource,
    WarehouseResource,
)

GROUP = "knowledge"
OWNERS = ["team:ml-platform"]
FOLLOW = dg.AutomationCondition.eager()
# the ontology is rebuilt on every cron tick; the chunks it yields rarely change, so what
# follows the chunks waits for a new data version (the chunk set's fingerprint)
FOLLOW_CHANGES = dg.AutomationCondition.eager().replace(
    "any_deps_updated",
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()),
)


def _rejections_md(chunks: ChunkSet) -> dg.MetadataValue:
    rows = [f"- `{r.doc_id}` ({r.source}): {r.reason} — {r.detail}" for r in chunks.rejected]
    return dg.MetadataValue.md("\n".join(rows) or "none")


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    owners=OWNERS,
    pool=WAREHOUSE_POOL,
    deps=["runbooks", "incidents", "ontology_objects"],
    automation_condition=FOLLOW,
    check_specs=[
        dg.AssetCheckSpec(
            "documents_accepted",
            asset="document_chunks",
            description="Every document became chunks; the rejected ones are listed with why "
            "(empty, binary, undecodable, too large, duplicate, invalid).",
        )
    ],
)
def document_chunks(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, data_folder: DataFolderResource
):
    """Runbooks split along their Markdown headings (the breadcrumb kept as context), one chunk
    per past incident, and the generated description of every ontology object whose type
    declares one. Ids are stable; each chunk carries its source, type, keys and content hash."""
    folder = data_folder.path
    with warehouse.get_connection() as conn:
        chunks = build_chunks(folder / "runbooks", folder / "incidents.jsonl", conn)
        write_chunks(conn, chunks)
    by_source = Counter(c.source for c in chunks.chunks)
    context.log.info(f"{len(chunks.chunks)} chunks, {len(chunks.rejected)} rejected")
    yield dg.AssetCheckResult(
        check_name="documents_accepted",
        passed=not chunks.rejected,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rejected": dg.MetadataValue.md(_rejections_md(chunks).value)},
    )
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(chunks.chunks)),
            "chunks_by_source": dg.MetadataValue.json(dict(by_source)),
            "rejected": _rejections_md(chunks),
            "longest_chunk_chars": dg.MetadataValue.int(
                max((len(c.text) for c in chunks.chunks), default=0)
            ),
        },
        data_version=dg.DataVersion(fingerprint(chunks.chunks)),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"chroma", "sentence_transformers"},
    owners=OWNERS,
    pool=VECTOR_STORE_POOL,
    deps=[document_chunks],
    automation_condition=FOLLOW_CHANGES,
    check_specs=[
        dg.AssetCheckSpec(
            "store_matches_chunks",
            asset="chunk_embeddings",
            blocking=True,
            description="The collection and the chunk table agree in count and ids, every "
            "vector has the model's dimension, and none holds NaN.",
        )
    ],
)
def chunk_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, knowledge: KnowledgeResource
):
    """The chunks embedded (normalised, our model, never chroma's default) in the chroma
    collection `knowledge_chunks`, and the BM25 index beside it. Only new or changed chunks are
    embedded; chunks that disappeared are deleted."""
    with warehouse.get_connection() as conn:
        chunks = read_chunks(conn)
    embedder = knowledge.embedder()
    records = store_records(chunks)
    with knowledge.store() as (store, rebuilt):
        if rebuilt:
            context.log.warning(rebuilt)
        started = time.perf_counter()
        report = store.sync(records, embedder.encode)
        seconds = time.perf_counter() - started
        problems = store.verify({c.chunk_id for c in chunks}, embedder.dimension)
        vectors = store.count()
    _, lexical_rebuilt = lexical_index(chunks, knowledge.lexical_folder)
    yield dg.AssetCheckResult(
        check_name="store_matches_chunks",
        passed=not problems,
        metadata={
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "vectors": dg.MetadataValue.int(vectors),
            "chunks": dg.MetadataValue.int(len(chunks)),
        },
    )
    if problems:
        raise dg.Failure(description="; ".join(problems))
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(vectors),
            "added": dg.MetadataValue.int(report.added),
            "updated": dg.MetadataValue.int(report.updated),
            "deleted": dg.MetadataValue.int(report.deleted),
            "unchanged": dg.MetadataValue.int(report.unchanged),
            "embedded": dg.MetadataValue.int(report.embedded),
            "embedded_per_second": dg.MetadataValue.float(
                round(report.embedded / seconds, 1) if report.embedded else 0.0
            ),
            "model": embedder.model_name,
            "dimension": dg.MetadataValue.int(embedder.dimension),
            "store": knowledge.host or str(knowledge.store_path),
            "rebuilt": rebuilt or "no",
            "bm25_rebuilt": lexical_rebuilt,
        },
        data_version=dg.DataVersion(fingerprint(chunks)),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"mlflow"},
    owners=OWNERS,
    pool=VECTOR_STORE_POOL,
    deps=[chunk_embeddings, "golden_questions"],
    automation_condition=FOLLOW_CHANGES,
    check_specs=[
        dg.AssetCheckSpec(
            "hybrid_not_worse",
            asset="retrieval_eval",
            description="Hybrid retrieval's hit@5 and MRR are at least vector-only's.",
        )
    ],
)
def retrieval_eval(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    knowledge: KnowledgeResource,
    data_folder: DataFolderResource,
    mlflow: MLflowResource,
):
    """The golden questions through retrieval: hit@1/3/5 and MRR, overall, per route and per
    language, for vector-only, lexical-only and hybrid (plus lexical with whitespace tokens, to
    show what the Korean tokenisation buys), as a table; logged to MLflow."""
    questions = load_golden(data_folder.path / "golden_questions.jsonl")
    with warehouse.get_connection() as conn:
        chunks = read_chunks(conn)
    with knowledge.store() as (store, rebuilt):
        if rebuilt:
            raise dg.Failure(description=f"{rebuilt}; materialize chunk_embeddings first")
        retriever = open_retriever(chunks, store, knowledge.embedder(), knowledge.lexical_folder)
        searches = {mode: _search(retriever, mode) for mode in MODES}
        whitespace = HybridRetriever(
            chunks,
            LexicalIndex.build(
                [c.chunk_id for c in chunks],
                [c.text for c in chunks],
                tokenizer=whitespace_tokenize,
            ),
            retriever.vector_search,
        )
        searches["lexical_whitespace"] = _search(whitespace, "lexical")
        scores = evaluate(searches, questions)
    table = scores_table(scores)
    hybrid, vector = score_of(scores, "hybrid"), score_of(scores, "vector")
    tracked = log_run(
        mlflow.uri,
        "retrieval_eval",
        run_name=f"retrieval_eval-{context.run_id[:8]}",
        params={"chunks": len(chunks), "questions": len(questions), "rrf_k": retriever.rrf_k},
        metrics=metrics(scores),
        texts={"retrieval_eval.md": table},
        tags={"dagster_run_id": context.run_id},
        artifact_root=mlflow.artifacts,
    )
    not_worse = hybrid.hits[5] >= vector.hits[5] and hybrid.mrr >= vector.mrr
    yield dg.AssetCheckResult(
        check_name="hybrid_not_worse",
        passed=not_worse,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "hybrid_hit_at_5": hybrid.hits[5],
            "vector_hit_at_5": vector.hits[5],
            "hybrid_mrr": hybrid.mrr,
            "vector_mrr": vector.mrr,
        },
    )
    overall = pl.DataFrame(
        [
            {"mode": s.mode, **{f"hit@{k}": round(v, 3) for k, v in s.hits.items()}, "mrr": s.mrr}
            for s in scores
            if s.slice == "overall"
        ]
    )
    yield dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(table),
            "overall": dg.MetadataValue.md(markdown_table(overall)),
            "questions": dg.MetadataValue.int(len(questions)),
            "hybrid_hit_at_5": dg.MetadataValue.float(hybrid.hits[5]),
            "hybrid_mrr": dg.MetadataValue.float(round(hybrid.mrr, 4)),
            "mlflow_run_id": tracked.run_id,
            "mlflow_experiment_id": tracked.experiment_id,
        }
    )


def _search(retriever: HybridRetriever, mode: str):
    return lambda question, k: retriever.search(question, k, mode=mode)  # type: ignore[arg-type]


knowledge_assets = [document_chunks, chunk_embeddings, retrieval_eval]
