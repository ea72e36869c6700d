"""Tags: the naive per-document task vs the batched task vs the in-process pipeline (the limit).

Throughput at several batch sizes, p50/p95 submit-to-result latency at a low and a saturating
arrival rate, 1 vs 2 worker processes, and the tag worker's RSS after preload and 1000 jobs.
"""

from __future__ import annotations

import gc
import time
from datetime import UTC
from itertools import cycle, islice
from typing import Any

from bench.harness import MODEL_CACHE, Stack, progress, summary, worker_rss
from bench.plain_tags import PLAIN_TASK
from bench.plan import Plan
from config import Settings
from tasks.tags.embedder import VectorCache
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import documents

BATCHED_TASK = "tasks.extract_tags"
#: distinct two-sentence documents the bundled samples can make (24 x 23 pairs)
DISTINCT_DOCS = 552
#: arrivals per second for the low-rate latency run: far below any mode's throughput
LOW_RATE_PER_S = 2.0
#: the saturating rate is this multiple of the in-process limit, so every mode falls behind
SATURATING_FACTOR = 1.5
WARM_UP_DOCS = 16


def docs(count: int, offset: int = 0) -> list[str]:
    """``count`` documents cycling through the distinct sample documents."""
    pool = documents(DISTINCT_DOCS)
    return list(islice(cycle(pool), offset, offset + count))


def in_process(plan: Plan) -> dict[int, float]:
    """Docs/s of ``extract_tags`` alone at each batch size: the limit for the worker.

    As a worker runs it: its backend and model cache (auto: the INT8 export the workers
    load), and a vector cache that has seen the same warm-up documents."""
    settings = Settings(embedder_device="cpu", model_cache_dir=MODEL_CACHE)  # type: ignore[call-arg]
    encoder = load_embedder(settings).model
    rates = {}
    texts = docs(plan.tags_docs)
    for size in plan.tags_batch_sizes:
        cache = VectorCache(settings.tags_vector_cache_mb * 1024 * 1024)
        extract_tags(docs(WARM_UP_DOCS), TagOptions(), encoder=encoder, cache=cache)
        started = time.perf_counter()
        for start in range(0, len(texts), size):
            extract_tags(texts[start : start + size], TagOptions(), encoder=encoder, cache=cache)
        rates[size] = len(texts) / (time.perf_counter() - started)
        progress(f"  in-process batch {size}: {rates[size]:.1f} docs/s")
    del encoder
    gc.collect()
    return rates


def throughput(stack: Stack, task: str, texts: list[str]) -> float:
    """Docs/s with every document queued at once, until the last result is back."""
    started = time.perf_counter()
    jobs = [stack.celery.send_task(task, kwargs={"text": t}, queue="tags") for t in texts]
    for job in jobs:
        job.get(timeout=900)
    return len(texts) / (time.perf_counter() - started)


def latencies(stack: Stack, task: str, texts: list[str], rate: float) -> dict[str, float]:
    """Submit open-loop at ``rate``/s; latency = result stored (worker clock) - submitted."""
    sent = []
    started = time.perf_counter()
    for index, text in enumerate(texts):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(
            (time.time(), stack.celery.send_task(task, kwargs={"text": text}, queue="tags"))
        )
    values = []
    for submitted, job in sent:
        job.get(timeout=900)
        done = job.date_done
        if done.tzinfo is None:  # stored as UTC, naive on some backends
            done = done.replace(tzinfo=UTC)
        values.append(1000 * (done.timestamp() - submitted))
    return {f"{k}_ms" if k != "n" else k: round(v, 1) for k, v in summary(values).items()}


def _latency_pair(stack: Stack, task: str, plan: Plan, saturating: float) -> dict[str, Any]:
    low = latencies(stack, task, docs(plan.latency_low_docs, 100), LOW_RATE_PER_S)
    high = latencies(stack, task, docs(plan.latency_high_docs, 200), saturating)
    progress(
        f"  latency p50/p95 low {low['p50_ms']:.0f}/{low['p95_ms']:.0f} ms, saturating "
        f"{high['p50_ms']:.0f}/{high['p95_ms']:.0f} ms"
    )
    return {
        "low": {"rate_per_s": LOW_RATE_PER_S, **low},
        "saturating": {"rate_per_s": round(saturating, 1), **high},
    }


def naive(stack: Stack, plan: Plan, saturating: float) -> dict[str, Any]:
    """The plain per-document task (bench-only module) on a tags worker, same embedder."""
    with stack.worker("tags-naive", "tags", module="bench.plain_tags") as worker:
        throughput(stack, PLAIN_TASK, docs(WARM_UP_DOCS))
        rate = throughput(stack, PLAIN_TASK, docs(plan.tags_docs))
        progress(f"  naive per-document task: {rate:.1f} docs/s")
        return {
            "docs_per_s": rate,
            "latency": _latency_pair(stack, PLAIN_TASK, plan, saturating),
            "ready_s": worker.ready_s,
        }


def batched(stack: Stack, plan: Plan, saturating: float) -> dict[str, Any]:
    """The batched task at each batch size; at the default one, latency and memory too."""
    out: dict[str, Any] = {"docs_per_s": {}}
    for size in plan.tags_worker_batch_sizes:
        label = f"tags-batch{size}"
        with stack.worker(label, "tags", MLWORKER_TAGS_BATCH_SIZE=str(size)) as worker:
            after_preload = worker_rss(worker)
            throughput(stack, BATCHED_TASK, docs(WARM_UP_DOCS))
            rate = throughput(stack, BATCHED_TASK, docs(plan.tags_docs))
            out["docs_per_s"][size] = rate
            progress(f"  batched task, batch size {size}: {rate:.1f} docs/s")
            if size != plan.default_tags_batch:
                continue
            out["latency"] = _latency_pair(stack, BATCHED_TASK, plan, saturating)
            out["memory"] = _after_jobs(stack, worker, after_preload, plan)
            out["ready_s"] = worker.ready_s
    return out


def _after_jobs(stack: Stack, worker: Any, after_preload: dict[str, float], plan: Plan) -> dict:
    """Top the worker up to ``plan.memory_tags_jobs`` documents, then read its RSS."""
    done = WARM_UP_DOCS + plan.tags_docs + plan.latency_low_docs + plan.latency_high_docs
    remaining = max(0, plan.memory_tags_jobs - done)
    for start in range(0, remaining, 250):
        throughput(stack, BATCHED_TASK, docs(min(250, remaining - start), 300 + start))
    after = worker_rss(worker)
    progress(f"  tag worker after {done + remaining} jobs: {after}")
    return {"jobs": done + remaining, "after_preload": after_preload, "after_jobs": after}


def two_processes(stack: Stack, plan: Plan) -> float:
    """The default batched task with 2 child processes (1 thread each) on the 2 cores."""
    with stack.worker("tags-2proc", "tags", concurrency=2):
        throughput(stack, BATCHED_TASK, docs(2 * WARM_UP_DOCS))
        rate = throughput(stack, BATCHED_TASK, docs(plan.tags_docs))
        progress(f"  batched task, 2 processes: {rate:.1f} docs/s")
        return rate


def run(stack: Stack, plan: Plan) -> dict[str, Any]:
    progress("tags: in-process pipeline (the limit)")
    limit = in_process(plan)
    saturating = SATURATING_FACTOR * max(limit.values())
    progress("tags: naive per-document task")
    plain = naive(stack, plan, saturating)
    progress("tags: batched task")
    grouped = batched(stack, plan, saturating)
    progress("tags: 1 vs 2 worker processes")
    two = two_processes(stack, plan)
    default = plan.default_tags_batch
    worker_rate = grouped["docs_per_s"][default]
    return {
        "docs_per_run": plan.tags_docs,
        "default_batch_size": default,
        "in_process_docs_per_s": limit,
        "naive_task": plain,
        "batched_task": grouped,
        "two_processes_docs_per_s": two,
        "ratios": {
            "batched_vs_naive": worker_rate / plain["docs_per_s"],
            "batched_vs_in_process_same_batch": worker_rate / limit[default],
            "batched_vs_in_process_best": worker_rate / max(limit.values()),
            "two_vs_one_process": two / worker_rate,
        },
    }
