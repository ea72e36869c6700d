"""Low-load latency of tags: the batched task against the naive per-document task, alternated.

A request arriving to an empty buffer with a child free starts at once
(``worker.batching.rules.starts_at_once``); this measures what that leaves of the batching
layer's cost at a low arrival rate: submit-to-result p50/p95 of the batched task and of the
bench's plain one-task-per-document worker, ``--rounds`` times each, A B A B, in one run.

    .venv/bin/python -m bench.low_latency [--rounds 2] [--docs 40]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from bench.harness import Stack, progress
from bench.plain_tags import PLAIN_TASK
from bench.tags import BATCHED_TASK, LOW_RATE_PER_S, WARM_UP_DOCS, docs, latencies, throughput

MODES = {"naive": ("bench.plain_tags", PLAIN_TASK), "batched": ("worker.cli", BATCHED_TASK)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.low_latency", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--docs", type=int, default=40, help="requests per round")
    args = parser.parse_args(argv)
    p50: dict[str, list[float]] = {m: [] for m in MODES}
    p95: dict[str, list[float]] = {m: [] for m in MODES}
    with Stack() as stack:
        for round_ in range(args.rounds):
            for mode, (module, task) in MODES.items():
                with stack.worker(f"tags-{mode}", "tags", module=module):
                    throughput(stack, task, docs(WARM_UP_DOCS))
                    got = latencies(stack, task, docs(args.docs, 100 * round_), LOW_RATE_PER_S)
                p50[mode].append(got["p50_ms"])
                p95[mode].append(got["p95_ms"])
                progress(
                    f"round {round_ + 1} {mode}: p50 {got['p50_ms']} ms, p95 {got['p95_ms']} ms"
                )
    print(f"\nat {LOW_RATE_PER_S}/s, {args.docs} requests a round, {args.rounds} rounds A B:")
    print("| task | p50 ms (median of rounds) | p95 ms |\n|---|---:|---:|")
    for mode in MODES:
        print(
            f"| {mode} | {statistics.median(p50[mode]):.0f} | {statistics.median(p95[mode]):.0f} |"
        )
    gap = statistics.median(p50["batched"]) - statistics.median(p50["naive"])
    print(f"\nbatched p50 - naive p50: {gap:+.0f} ms (goal: <= +15 ms)")


if __name__ == "__main__":
    main()
