"""Tag extraction throughput and latency (not a test: prints figures, never fails on a timing).

Usage: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.tags [N]`` from the repo root.

Side by side on the same N documents, one worker child each, same cached model:
  (a) one task per document: the tags worker with ``MLWORKER_TAGS_BATCH_SIZE=1`` (each
      message is its own pool job and result, as a plain Celery task would be),
  (b) the batched task with the configured batch size and flush interval,
  (c) ``extract_tags`` in process, no queue.
Then p50/p95 submit-to-result latency of (a) and (b) at a low arrival rate.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

from celery import Celery

from config import Settings, get_settings
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import documents
from tests.support import WorkerProcess
from worker.app import build_app
from worker.redis_server import EmbeddedRedis

TASK = "tasks.extract_tags"
#: arrivals per second for the latency run: well below either mode's throughput
LOW_RATE_PER_S = 4.0
LATENCY_DOCS = 24


def in_process(docs: list[str], report: dict[str, float]) -> None:
    """(c): the pipeline alone, in chunks of the configured batch size."""
    encoder = load_embedder(Settings(embedder_device="cpu")).model
    extract_tags(docs[:8], TagOptions(), encoder=encoder)  # warm-up
    size = get_settings().tags_batch_size
    started = time.perf_counter()
    for start in range(0, len(docs), size):
        extract_tags(docs[start : start + size], TagOptions(), encoder=encoder)
    report["c_in_process_docs_per_s"] = len(docs) / (time.perf_counter() - started)


def _throughput(app: Celery, docs: list[str]) -> float:
    started = time.perf_counter()
    jobs = [app.send_task(TASK, kwargs={"text": d}) for d in docs]
    for job in jobs:
        job.get(timeout=600)
    return len(docs) / (time.perf_counter() - started)


def _latencies(app: Celery, docs: list[str]) -> list[float]:
    """Submit at LOW_RATE_PER_S; latency = result stored - submitted (via the result's date)."""
    sent: list[tuple[float, object]] = []
    for doc in docs:
        sent.append((time.time(), app.send_task(TASK, kwargs={"text": doc})))
        time.sleep(1 / LOW_RATE_PER_S)
    latencies = []
    for submitted, job in sent:
        job.get(timeout=600)  # type: ignore[attr-defined]
        done = job.date_done  # type: ignore[attr-defined]
        if done.tzinfo is None:  # stored as UTC; naive on some backends
            done = done.replace(tzinfo=UTC)
        done = done.timestamp()
        latencies.append(done - submitted)
    return latencies


def through_worker(docs: list[str], report: dict[str, float], label: str, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        env = {
            "MLWORKER_REDIS_URL": redis.url,
            "MLWORKER_TAGS_BATCH_SIZE": str(batch),
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
        }
        app = build_app(Settings(redis_url=redis.url))  # type: ignore[call-arg]
        worker = WorkerProcess("tags", env, Path(tmp)).start(app)
        try:
            _throughput(app, docs[:16])  # warm-up
            report[f"{label}_docs_per_s"] = _throughput(app, docs)
            lat = sorted(_latencies(app, documents(LATENCY_DOCS)))
            report[f"{label}_p50_ms"] = 1000 * statistics.median(lat)
            report[f"{label}_p95_ms"] = 1000 * lat[int(0.95 * (len(lat) - 1))]
            print(label, {k: round(v, 1) for k, v in report.items()}, flush=True)
        finally:
            gc.collect()  # free AsyncResults while Redis is still up (their __del__ calls it)
            worker.stop()
            app.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    docs = documents(count)
    report: dict[str, float] = {}
    in_process(docs, report)
    through_worker(docs, report, "a_one_task_per_doc", batch=1)
    through_worker(docs, report, "b_batched", batch=get_settings().tags_batch_size)
    print(f"{count} documents, batch size {get_settings().tags_batch_size}, 1 child each")
    for key, value in report.items():
        print(f"{key:32s} {value:9.1f}")
    for label, top, bottom in (
        ("batched / one-per-doc", "b_batched_docs_per_s", "a_one_task_per_doc_docs_per_s"),
        ("batched / in-process", "b_batched_docs_per_s", "c_in_process_docs_per_s"),
    ):
        print(f"{label:32s} {report[top] / report[bottom]:9.2f}")


if __name__ == "__main__":
    main()
