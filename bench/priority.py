"""Interactive tags jobs behind a bulk backlog: priority 0 against a queue of priority 9.

One tags worker with the default batch size. Round A: interactive jobs (priority 0) on an
idle worker. Round B: ``--bulk`` jobs queued at priority 9 first, then the same interactive
jobs while the backlog drains. Rounds alternate A B A B in one run; latency is submitted
to result stored (worker clock). The backlog left after B is dropped from Redis (its
priority list deleted), so each round starts from the same state.

    .venv/bin/python -m bench.priority [--rounds 2] [--bulk 5000] [--interactive 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from bench.harness import Stack, progress
from bench.tags import BATCHED_TASK, WARM_UP_DOCS, docs, throughput

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bulk", type=int, default=5000, help="bulk jobs queued in round B")
    parser.add_argument("--interactive", type=int, default=20, help="interactive jobs a round")
    args = parser.parse_args(argv)
    p50: dict[str, list[float]] = {"idle": [], "behind bulk": []}
    worst: dict[str, list[float]] = {"idle": [], "behind bulk": []}
    left: list[int] = []
    with Stack() as stack, stack.worker("tags-priority", "tags"):
        client = stack.celery.backend.client
        throughput(stack, BATCHED_TASK, docs(WARM_UP_DOCS))
        for round_ in range(args.rounds):
            texts = docs(args.interactive, 200 + 50 * round_)
            got = interactive_p50(stack, texts)
            p50["idle"].append(got[0])
            worst["idle"].append(got[1])
            progress(f"round {round_ + 1} idle: p50 {got[0]:.0f} ms, max {got[1]:.0f} ms")
            with stack.celery.producer_or_acquire() as producer:
                for text in docs(args.bulk, 1000 * round_):
                    stack.celery.send_task(
                        BATCHED_TASK,
                        kwargs={"text": text},
                        queue="tags",
                        priority=BULK,
                        producer=producer,
                    )
            got = interactive_p50(stack, texts)
            left.append(int(client.llen(BULK_LIST)))
            client.delete(BULK_LIST)
            time.sleep(5)  # what the worker had prefetched of the backlog runs out
            p50["behind bulk"].append(got[0])
            worst["behind bulk"].append(got[1])
            progress(
                f"round {round_ + 1} behind {args.bulk} bulk: p50 {got[0]:.0f} ms, "
                f"max {got[1]:.0f} ms, {left[-1]} bulk jobs still queued at the end"
            )
    print(f"\n{args.interactive} interactive tag jobs at priority 0, one a second, "
          f"{args.rounds} rounds A B:")  # fmt: skip
    print("| interactive jobs | p50 ms (median of rounds) | max ms |\n|---|---:|---:|")
    for case in p50:
        print(f"| {case} | {statistics.median(p50[case]):.0f} | {max(worst[case]):.0f} |")
    ratio = statistics.median(p50["behind bulk"]) / statistics.median(p50["idle"])
    print(
        f"\nbehind {args.bulk} bulk jobs (priority 9) / idle: {ratio:.2f}x p50; "
        f"bulk still queued when the last interactive job was done: {min(left)}-{max(left)}"
    )


if __name__ == "__main__":
    main()
