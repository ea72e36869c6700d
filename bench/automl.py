"""AutoML: peak RSS and time with memory-aware loading and planning (the ``tasks.automl`` job on
a worker) vs without (``bench.naive_automl``: plain read_csv + autofeat defaults) on the same
synthetic regression table, against the budget the bench worker is configured with.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from bench.harness import MB, Stack, progress, worker_rss
from bench.plan import Plan

TASK = "tasks.automl"
TARGET = "y"
#: peak RSS sampling period for the naive subprocess (autofeat's join copies live ~100 ms)
SAMPLE_S = 0.05
#: the naive run is killed above this multiple of the budget, so it cannot take the box down
RSS_CEILING_FACTOR = 3


def make_table(path: Path, rows: int, columns: int) -> None:
    """Uniform features and a target with a square, a log product and a reciprocal in it."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 3.0, size=(rows, columns))
    y = x[:, 0] ** 2 + np.log(x[:, 1]) * x[:, 2] + 1 / x[:, 3] + rng.normal(0, 0.1, rows)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(columns)])
    frame[TARGET] = y
    frame.to_csv(path, index=False)


@dataclass
class Watched:
    """A finished (or stopped) subprocess: its stdout, wall time and sampled peak RSS."""

    output: str
    seconds: float
    peak_rss_mb: float
    stopped: str  #: "" when it ran to the end, else "timeout" or "rss_ceiling"


def run_watched(
    cmd: list[str],
    *,
    timeout_s: float = math.inf,
    ceiling_mb: float = math.inf,
    stderr: int | None = None,
) -> Watched:
    """Run ``cmd``, sampling its RSS every ``SAMPLE_S``; kill it past the time or RSS bound."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    watched = psutil.Process(proc.pid)
    peak, stopped = 0.0, ""
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss / MB)
        except psutil.Error:
            break
        elapsed = time.perf_counter() - started
        if elapsed > timeout_s or peak > ceiling_mb:
            stopped = "timeout" if peak <= ceiling_mb else "rss_ceiling"
            proc.kill()
            break
        time.sleep(SAMPLE_S)
    output = proc.communicate()[0]
    return Watched(output, time.perf_counter() - started, peak, stopped)


def naive(path: Path, plan: Plan) -> dict[str, Any]:
    """``bench.naive_automl`` in a subprocess, peak RSS sampled, bounded by timeout and RSS."""
    run = run_watched(
        [sys.executable, "-m", "bench.naive_automl", str(path), TARGET],
        timeout_s=plan.naive_automl_timeout_s,
        ceiling_mb=RSS_CEILING_FACTOR * plan.automl_budget_mb,
        stderr=subprocess.DEVNULL,
    )
    output, seconds, peak, stopped = run.output, run.seconds, run.peak_rss_mb, run.stopped
    report = json.loads(output.strip().splitlines()[-1]) if not stopped and output else {}
    progress(
        f"  naive autofeat: {'stopped by ' + stopped if stopped else 'finished'} after "
        f"{seconds:.1f} s, peak RSS {peak:.0f} MB"
    )
    return {
        "seconds": seconds,
        "peak_rss_mb": peak,
        "finished": not stopped,
        "stopped_by": stopped or None,
        "timeout_s": plan.naive_automl_timeout_s,
        "r2": report.get("r2"),
        "features": report.get("features"),
    }


def memory_aware(stack: Stack, name: str, plan: Plan) -> dict[str, Any]:
    """The production job on an automl worker configured with the bench's budget."""
    budget = str(plan.automl_budget_mb)
    runs = []
    with stack.worker("automl", "automl", MLWORKER_AUTOML_MEMORY_BUDGET_MB=budget) as worker:
        after_preload = worker_rss(worker)
        for _ in range(plan.automl_jobs):
            started = time.perf_counter()
            job = stack.celery.send_task(TASK, kwargs={"data_path": name, "target": TARGET})
            result = job.get(timeout=1800)
            runs.append(
                {
                    "seconds": time.perf_counter() - started,
                    "worker_elapsed_s": result["elapsed_s"],
                    "peak_rss_mb": result["memory"]["peak_rss_mb"],
                    "estimated_peak_mb": result["memory"]["estimated_peak_mb"],
                    "r2": result["metrics"].get("r2"),
                    "features": result["features"]["count"],
                    "mode": result["mode"],
                    "phase_seconds": result["phase_seconds"],
                }
            )
            last = runs[-1]
            progress(
                f"  memory-aware job: {last['seconds']:.1f} s, peak RSS "
                f"{last['peak_rss_mb']:.0f} MB (plan {last['estimated_peak_mb']:.0f})"
            )
        memory = {
            "jobs": len(runs),
            "after_preload": after_preload,
            "after_jobs": worker_rss(worker),
        }
    return {"runs": runs, "memory": memory}


def run(stack: Stack, plan: Plan) -> dict[str, Any]:
    name = f"synthetic_{plan.automl_rows}x{plan.automl_columns}.csv"
    path = stack.input_root / name
    make_table(path, plan.automl_rows, plan.automl_columns)
    size = path.stat().st_size
    progress(f"automl: memory-aware job on {name} ({size / 1024:.0f} KB)")
    aware = memory_aware(stack, name, plan)
    progress(f"automl: naive autofeat defaults (timeout {plan.naive_automl_timeout_s:.0f} s)")
    plain = naive(path, plan)
    first = aware["runs"][0]
    return {
        "dataset": {
            "rows": plan.automl_rows,
            "feature_columns": plan.automl_columns,
            "csv_bytes": size,
            "task": "regression",
        },
        "budget_mb": plan.automl_budget_mb,
        "memory_aware": aware,
        "naive": plain,
        "ratios": {
            "naive_vs_aware_seconds": plain["seconds"] / first["seconds"],
            "naive_vs_aware_peak_rss": plain["peak_rss_mb"] / first["peak_rss_mb"],
        },
    }
