"""Run every scenario against its baselines and write results.json, results.md and plots.

    python -m bench            # full run, < 15 min on 2 cores
    python -m bench --quick    # smaller sizes, < 3 min
    python -m bench.startup    # worker start-to-ready and RSS per queue only
    python -m bench.chaos      # 1000 jobs under kill -9 of children and Redis (~10 min; apart)

Starts its own redis-server and workers (nothing else needs to run). Numbers are whatever was
measured; product targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import automl, fanout, profiles, real_tags, report, tags, transcription
from bench.harness import REPO, Stack, progress
from bench.plan import make_plan
from config import get_settings


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was when the run started."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or None,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def memory_table(results: dict[str, Any]) -> dict[str, Any]:
    """Memory per worker after preload and after jobs, one row per family and backend."""
    settings = get_settings()
    return {
        "tags": {
            "backend": f"{settings.embedder_backend} MiniLM-L6 CPU",
            **results["tags"]["batched_task"]["memory"],
        },
        "transcribe": {
            "backend": "ctranslate2 whisper-base int8 CPU",
            **results["transcription"]["memory"],
        },
        "automl": {"backend": "autofeat+sklearn", **results["automl"]["memory_aware"]["memory"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 3 minutes")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="where to write results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # a killed run (timeout, Ctrl-C) still stops its workers and redis-server on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = make_plan(args.quick)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": plan.as_dict(),
    }
    progress(f"bench {'quick' if plan.quick else 'full'}; load average {os.getloadavg()}")
    started = time.perf_counter()
    with Stack() as stack:
        results["tags"] = tags.run(stack, plan)
        progress("tags: real abstracts, queue vs naive vs in-process vs KeyBERT")
        results["real_tags"] = real_tags.run(stack, plan.real_tags_docs, plan.real_tags_rounds)
        results["transcription"] = transcription.run(stack, plan)
        progress("transcription: a long recording fanned out over 1 and 2 children")
        results["fanout"] = fanout.run(
            stack, plan.fanout_minutes, plan.fanout_rounds, get_settings().transcribe_fanout_chunk_s
        )
        results["automl"] = automl.run(stack, plan)
        results["memory"] = memory_table(results)
        results["targets"] = profiles.run(stack, plan, results)
        results["rss_samples"] = stack.rss.samples
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    written = report.write(results, args.out)
    print(report.table(results), flush=True)
    progress("wrote " + ", ".join(str(p.relative_to(REPO)) for p in written))


if __name__ == "__main__":
    main()
