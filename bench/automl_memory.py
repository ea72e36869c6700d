"""The measurements behind the AutoML planner's memory model (``tasks/automl/planner.py``).

    .venv/bin/python -m bench.automl_memory

Fits autofeat through ``engineer_features`` on synthetic rows for several (rows, feature
columns, steps) and prints the peak RSS above the baseline next to the planner's estimate.
Each fit runs in a fresh subprocess so numba/sympy caches of one fit do not hide the next's.
"""

from __future__ import annotations

import json
import subprocess
import sys

from autofeat.feateng import n_cols_generated

from tasks.automl.planner import NORMAL, _feateng_mb

_FIT = """
import json, sys, time
import numpy as np, pandas as pd
from tasks.automl.features import engineer_features
from tasks.automl.monitor import PeakRSS
from tasks.automl.planner import plan_job
rows, cols, steps = (int(v) for v in sys.argv[1:4])
rng = np.random.default_rng(0)
x = rng.uniform(0.5, 3.0, size=(rows, 8)).astype(np.float32)
y = x[:, 0] ** 2 + np.log(x[:, 1]) * x[:, 2] + 1 / x[:, 3] + rng.normal(0, 0.1, rows)
frame = pd.DataFrame(x, columns=[f"c{i}" for i in range(8)])
plan = plan_job(mode="normal" if steps == 2 else "lightweight", task_type="regression",
                rows=rows, features=8, budget_mb=64000, baseline_mb=0, n_jobs=1)
tier_cols = plan.feateng_cols
import dataclasses
from autofeat.feateng import n_cols_generated
trans = plan.transformations
plan = dataclasses.replace(plan, feateng_cols=cols, feateng_rows=rows,
                           max_generated=n_cols_generated(cols, steps, len(trans)),
                           max_gb=64.0)
started = time.perf_counter()
with PeakRSS() as rss:
    engineer_features(frame, y, "regression", plan, 0)
print(json.dumps({"above_mb": rss.peak_mb - rss.baseline_mb,
                  "seconds": time.perf_counter() - started}))
"""

CASES = [(5_000, 6, 2), (20_000, 4, 2), (20_000, 6, 2), (40_000, 6, 2), (20_000, 8, 2),
         (2_000, 5, 1), (20_000, 5, 1)]  # fmt: skip


def main() -> None:
    print("| rows | columns | steps | generated | peak above baseline MB | planner MB | s |")
    print("|---|---|---|---|---|---|---|")
    for rows, cols, steps in CASES:
        n_trans = len(NORMAL.transformations) if steps == 2 else 3
        generated = n_cols_generated(cols, steps, n_trans)
        out = subprocess.run(
            [sys.executable, "-c", _FIT, str(rows), str(cols), str(steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {rows} | {cols} | {steps} | {generated} | {measured['above_mb']:.0f} | "
            f"{_feateng_mb(rows, generated, steps):.0f} | {measured['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
