"""Interactive tags jobs behind a bulk backlog: priority 0 against a queue of priority 9.

One tags worker with the default batch size (``MLWORKER_TAGS_BATCH_SIZE``; one batch's
time is that many documents at the measured docs/s), started once per configuration and round:
each ``--prefetch`` value (``MLWORKER_BATCH_PREFETCH``, batches a child reserves) in turn,
A B A B in one run. In each: interactive jobs (priority 0) on the idle worker; then
``--bulk`` jobs queued at priority 9 and the same interactive jobs while the backlog drains
(latency is submitted to result stored, worker clock); then, the backlog dropped from Redis
(its priority list deleted), docs/s with ``--throughput`` documents queued at once, which is
what a smaller prefetch costs.

    .venv/bin/python -m bench.priority [--rounds 2] [--bulk 5000] [--interactive 20]
        [--prefetch 2,1] [--throughput 640]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.harness import Stack, progress
from bench.tags import BATCHED_TASK, WARM_UP_DOCS, docs, throughput
from config import Settings

URGENT, BULK = 0, 9
#: kombu's Redis list of priority 9 on the tags queue
BULK_LIST = "tags\x06\x169"
INTERACTIVE_RATE_PER_S = 1.0


def interactive_p50(stack: Stack, texts: list[str]) -> tuple[float, float]:
    """p50 and max ms of ``texts`` sent at priority 0, one a second."""
    sent = []
    started = time.perf_counter()
    for index, text in enumerate(texts):
        delay = started + index / INTERACTIVE_RATE_PER_S - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        job = stack.celery.send_task(
            BATCHED_TASK, kwargs={"text": text}, queue="tags", priority=URGENT
        )
        sent.append((time.time(), job))
    values = []
    for submitted, job in sent:
        job.get(timeout=900)
        values.append((job.date_done.timestamp() - submitted) * 1000)
    return statistics.median(values), max(values)


def one_round(stack: Stack, args: argparse.Namespace, prefetch: int, round_: int) -> dict[str, Any]:
    """Idle and behind-bulk interactive latency, then bulk docs/s, on a fresh worker."""
    label = f"tags-prefetch-{prefetch}-{round_}"
    with stack.worker(label, "tags", MLWORKER_BATCH_PREFETCH=str(prefetch)):
        client = stack.celery.backend.client
        throughput(stack, BATCHED_TASK, docs(WARM_UP_DOCS))
        texts = docs(args.interactive, 200 + 50 * round_)
        idle = interactive_p50(stack, texts)
        with stack.celery.producer_or_acquire() as producer:
            for text in docs(args.bulk, 1000 * round_):
                stack.celery.send_task(
                    BATCHED_TASK,
                    kwargs={"text": text},
                    queue="tags",
                    priority=BULK,
                    producer=producer,
                )
        behind = interactive_p50(stack, texts)
        left = int(client.llen(BULK_LIST))
        client.delete(BULK_LIST)
        time.sleep(5)  # what the worker had prefetched of the backlog runs out
        rate = throughput(stack, BATCHED_TASK, docs(args.throughput, 20000 + 1000 * round_))
    got = {"idle": idle, "behind bulk": behind, "left": left, "docs/s": rate}
    progress(
        f"round {round_ + 1} prefetch {prefetch}: idle p50 {idle[0]:.0f} ms; behind "
        f"{args.bulk} bulk p50 {behind[0]:.0f} ms (max {behind[1]:.0f}), {left} bulk left "
        f"queued; {rate:.1f} docs/s"
    )
    return got


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bulk", type=int, default=5000, help="bulk jobs queued")
    parser.add_argument("--interactive", type=int, default=20, help="interactive jobs a phase")
    parser.add_argument("--prefetch", default="2,1", help="MLWORKER_BATCH_PREFETCH values")
    parser.add_argument("--throughput", type=int, default=640, help="docs for the docs/s phase")
    args = parser.parse_args(argv)
    prefetches = [int(v) for v in args.prefetch.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {p: [] for p in prefetches}
    with Stack() as stack:
        for round_ in range(args.rounds):
            for prefetch in prefetches:
                runs[prefetch].append(one_round(stack, args, prefetch, round_))
    print(
        f"\n{args.interactive} interactive tag jobs at priority 0, one a second; "
        f"{args.bulk} bulk jobs at priority 9; {args.rounds} rounds, configurations alternated:"
    )
    print(
        "| batches a child reserves | p50 ms idle | p50 ms behind bulk | max ms behind bulk "
        "| behind / idle | docs/s, all queued at once | one batch's time | p50 behind bulk "
        "in batches |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    batch = Settings().tags_batch_size
    for prefetch, got in runs.items():
        idle = statistics.median(r["idle"][0] for r in got)
        behind = statistics.median(r["behind bulk"][0] for r in got)
        worst = max(r["behind bulk"][1] for r in got)
        rate = statistics.median(r["docs/s"] for r in got)
        batch_ms = 1000 * batch / rate
        print(f"| {prefetch} | {idle:.0f} | {behind:.0f} | {worst:.0f} | {behind / idle:.1f}x "
              f"| {rate:.1f} | {batch_ms:.0f} ms | {behind / batch_ms:.2f} |")  # fmt: skip
    if len(prefetches) == 2:
        a, b = prefetches
        rate = [statistics.median(r["docs/s"] for r in runs[p]) for p in (a, b)]
        behind = [statistics.median(r["behind bulk"][0] for r in runs[p]) for p in (a, b)]
        print(
            f"\nprefetch {b} / prefetch {a}: p50 behind bulk {behind[1] / behind[0]:.2f}x, "
            f"docs/s {rate[1] / rate[0]:.2f}x"
        )


if __name__ == "__main__":
    main()
