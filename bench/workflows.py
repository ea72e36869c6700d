"""Bulk submit of tag jobs: the one-producer bulk path against ``extract_tags`` one by one.

Per mode, ``--docs`` documents: the seconds to submit them (validation included), the Redis
commands that cost per job (``INFO commandstats``), and end-to-end docs/s until the last
result is back: the bulk path polls every pending result with one MGET per poll
(``worker.bulk``, what ``MLClient.map`` does), one by one waits on each ``Job.result()``
in turn, as an app would. Modes alternate A B A B on one warm tags worker in one run.

``--submit-only`` starts no worker and measures the submit side alone (the queue is purged
after each mode): the client's cost without a worker competing for the same cores.

    .venv/bin/python -m bench.workflows [--docs 10000] [--rounds 2] [--submit-only]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import redis

from bench.harness import Stack, progress
from bench.tags import WARM_UP_DOCS, docs, throughput
from tasks.tags.options import ExtractTagsRequest
from worker import bulk
from worker.client import PRIORITY_BULK, MLClient

TASK = "tasks.extract_tags"
#: seconds the last result of a round may take (10,000 docs on 2 cores: a few minutes)
ROUND_TIMEOUT_S = 1800.0


def commands(client: redis.Redis) -> int:
    """Commands the Redis server has run so far (all types, this bench's only clients)."""
    return sum(int(s["calls"]) for s in client.info("commandstats").values())


def one_by_one(ml: MLClient, texts: list[str]) -> Callable[[], None]:
    """Submit each text with ``extract_tags``; returns the wait for all results."""
    jobs = [ml.extract_tags(text) for text in texts]

    def wait() -> None:
        for job in jobs:
            job.result(timeout=ROUND_TIMEOUT_S)

    return wait


def bulk_path(ml: MLClient, texts: list[str]) -> Callable[[], None]:
    """Validate every text, send all through one producer; returns the MGET poll for all."""
    kwargs = [ExtractTagsRequest.parse({"text": t}).to_kwargs() for t in texts]
    sent = bulk.submit_many(ml.app, TASK, kwargs, priority=PRIORITY_BULK)
    ids = [s.job_id for s in sent if isinstance(s, bulk.Submitted)]

    def wait() -> None:
        for _ in bulk.poll_many(ml.app, ids, ROUND_TIMEOUT_S):
            pass

    return wait


MODES: dict[str, Callable[[MLClient, list[str]], Callable[[], None]]] = {
    "one_by_one": one_by_one,
    "bulk": bulk_path,
}


def measure(
    stack: Stack, client: redis.Redis, mode: str, texts: list[str], wait_results: bool = True
) -> dict[str, float]:
    """Submit seconds, commands per job while submitting, end-to-end docs/s (0 without
    ``wait_results``: the queue is purged instead)."""
    ml = MLClient(app=stack.celery)
    before = commands(client)
    started = time.perf_counter()
    wait = MODES[mode](ml, texts)
    submitted = time.perf_counter()
    per_job = (commands(client) - before - 1) / len(texts)  # -1: the INFO call itself
    if not wait_results:
        del wait  # its jobs' AsyncResults go now, not after the purge
        stack.celery.control.purge()
    else:
        wait()
    ended = time.perf_counter()
    return {
        "submit_s": submitted - started,
        "submit_per_s": len(texts) / (submitted - started),
        "commands_per_job": per_job,
        "docs_per_s": len(texts) / (ended - started) if wait_results else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__)
    parser.add_argument("--docs", type=int, default=10_000, help="jobs per mode and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--submit-only", action="store_true", help="no worker, no results")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with Stack() as stack:
        client = redis.Redis.from_url(stack.redis.url)
        with ExitStack() as worker:
            if not args.submit_only:
                worker.enter_context(stack.worker("tags-workflows", "tags"))
                throughput(stack, TASK, docs(WARM_UP_DOCS))
            for round_ in range(args.rounds):
                for mode in MODES:
                    texts = docs(args.docs, offset=round_ * args.docs)
                    got = measure(stack, client, mode, texts, not args.submit_only)
                    runs[mode].append(got)
                    progress(
                        f"round {round_ + 1} {mode}: submit {got['submit_s']:.2f} s "
                        f"({got['submit_per_s']:.0f}/s, {got['commands_per_job']:.1f} "
                        f"commands/job), end to end {got['docs_per_s']:.1f} docs/s"
                    )
        client.close()
    print(report(runs, args.docs, args.rounds, not args.submit_only))


def report(runs: dict[str, list[dict[str, Any]]], n: int, rounds: int, waited: bool = True) -> str:
    """Medians of the rounds per mode, then the bulk path's ratios to one by one."""

    def med(mode: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[mode]))

    rows = [
        f"\n{n} tag jobs per mode, {rounds} rounds A B (medians):",
        "| mode | submit s | submits/s | Redis commands/job | end-to-end docs/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        rows.append(
            f"| {mode} | {med(mode, 'submit_s'):.2f} | {med(mode, 'submit_per_s'):.0f} | "
            f"{med(mode, 'commands_per_job'):.1f} | {med(mode, 'docs_per_s'):.1f} |"
        )
    speedup = med("one_by_one", "submit_s") / med("bulk", "submit_s")
    rows.append(f"\nbulk submit is {speedup:.2f}x as fast as one by one")
    if waited:
        e2e = med("bulk", "docs_per_s") / med("one_by_one", "docs_per_s")
        rows.append(f"bulk end-to-end docs/s is {e2e:.2f}x one by one's")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
