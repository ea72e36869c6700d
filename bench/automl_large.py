"""AutoML on a large synthetic table: memory-aware pipeline vs naive autofeat, peak RSS.

    .venv/bin/python -m bench.automl_large --rows 1000000 --budget-mb 1024 2048

Both run in subprocesses whose RSS is sampled every 50 ms: the memory-aware pipeline once per
budget, the naive run (plain ``pd.read_csv`` + ``AutoFeatRegressor()`` defaults,
``bench.naive_automl``) once, killed past ``--naive-timeout`` seconds or 3x the largest budget
so it cannot take the machine down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench.automl import TARGET, make_table, naive, run_watched
from bench.plan import make_plan

MB = 1024 * 1024

_PIPELINE = """
import json, sys
from config import Settings
from tasks.automl.options import AutoMLOptions
from tasks.automl.pipeline import run_automl
root, out, budget, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
settings = Settings(input_root=root, output_root=out)
opts = AutoMLOptions.from_kwargs({"target": target, "memory_budget_mb": budget})
r = run_automl("table.csv", opts, settings=settings).as_dict()
print(json.dumps({"r2": r["metrics"].get("r2"), "memory": r["memory"], "mode": r["mode"],
                  "plan": r["plan"], "phase_seconds": r["phase_seconds"]}))
"""


def memory_aware(root: Path, budget_mb: int) -> dict[str, object]:
    out = str(root / "out")
    cmd = [sys.executable, "-c", _PIPELINE, str(root), out, str(budget_mb), TARGET]
    run = run_watched(cmd)
    report = json.loads(run.output.strip().splitlines()[-1])
    return {"seconds": run.seconds, "peak_rss_mb": run.peak_rss_mb, **report}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.automl_large")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--budget-mb", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--naive-timeout", type=float, default=300.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlworker-automl-large-"))
    make_table(root / "table.csv", args.rows, args.columns)
    size_mb = (root / "table.csv").stat().st_size / MB
    print(f"table: {args.rows} rows x {args.columns} columns, {size_mb:.0f} MB CSV", flush=True)
    aware = {}
    for budget in args.budget_mb:
        aware[budget] = memory_aware(root, budget)
        print(f"memory-aware, budget {budget} MB: {json.dumps(aware[budget])}", flush=True)
    plan = dataclasses.replace(
        make_plan(False),
        automl_budget_mb=max(args.budget_mb),
        naive_automl_timeout_s=args.naive_timeout,
    )
    plain = naive(root / "table.csv", plan)
    print(f"naive: {json.dumps(plain)}", flush=True)
    print(
        "| run | budget MB | seconds | peak RSS MB | peak / budget | peak phase | finished | r2 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for budget, run in aware.items():
        phases = run["memory"]["phase_peak_rss_mb"]
        print(
            f"| memory-aware pipeline | {budget} | {run['seconds']:.0f} | "
            f"{run['peak_rss_mb']:.0f} | {run['peak_rss_mb'] / budget:.0%} | "
            f"{max(phases, key=phases.get)} | yes ({run['mode']}) | {run['r2']} |"
        )
    stopped = "yes" if plain["finished"] else f"stopped by {plain['stopped_by']}"
    print(
        f"| naive read_csv + autofeat defaults | (none; killed at {3 * max(args.budget_mb)}) | "
        f"{plain['seconds']:.0f} | {plain['peak_rss_mb']:.0f} | "
        f"{plain['peak_rss_mb'] / max(args.budget_mb):.0%} of {max(args.budget_mb)} | - | "
        f"{stopped} | {plain['r2']} |"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
