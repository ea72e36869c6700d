"""AutoML quality: mlworker's AutoML job (default options) vs three plain scikit-learn
baselines on the same held-out rows of real tables.

Tables: scikit-learn's bundled sets (diabetes, breast cancer, wine, iris, digits, linnerud)
and three of autofeat's published benchmark sets, committed under bench/data/tables/ (see its
README: UCI concrete, airfoil self-noise and white wine quality).

Each table is written as a CSV to a scratch input root; mlworker runs
``tasks.automl.pipeline.run_automl`` on it in this process (the code a worker runs, default
``AutoMLOptions`` but the target); the baselines train on ``prepare_split``'s rows, the
very train/test split, encoding and task type the job used:

- linear: standardised least squares (regression) or logistic regression (classification)
- RF: random forest, scikit-learn defaults (100 trees)
- HGB: histogram gradient boosting, scikit-learn defaults

all with ``random_state`` 0. Metric: held-out R² (regression) or accuracy (classification);
gap = mlworker - best baseline. autofeat's own published figures (its benchmark notebook,
autofeat 2.x, another split: ``train_test_split(random_state=12)``) are shown for reference.

    .venv/bin/python -m bench.automl_quality [--tables diabetes,wine,...]

Prints a Markdown table and writes bench/results/automl_quality.json; ~5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DATA_DIR = Path(__file__).parent / "data" / "tables"
RESULTS = Path(__file__).parent / "results" / "automl_quality.json"
TARGET = "target"
#: mlworker may trail the best baseline by this much before the gap needs explaining
TOLERANCE = 0.02
SEED = 0
BASELINES = ("linear", "random_forest", "hist_gradient_boosting")


@dataclass(frozen=True)
class Table:
    """A real table: how to load it (target column renamed ``target``) and where it is from."""

    name: str
    source: str
    load: Callable[[], pd.DataFrame]
    #: autofeat's published held-out R² for this set (its notebook), and how it was reached
    published: tuple[float, str] | None = None


def _sklearn(loader: Callable[..., Any]) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        bunch = loader(as_frame=True)
        return bunch.frame.rename(columns={bunch.target.name: TARGET})

    return load


def _linnerud() -> pd.DataFrame:
    """Three exercises (chins, situps, jumps) of 20 men, predicting their weight."""
    bunch = datasets.load_linnerud(as_frame=True)
    return bunch.data.assign(**{TARGET: bunch.target["Weight"]})


def _committed(name: str, target: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        return pd.read_csv(DATA_DIR / f"{name}.csv").rename(columns={target: TARGET})

    return load


#: autofeat's notebook (autofeat_benchmark_regression.ipynb, 2020 outputs): held-out R² of
#: AutoFeatRegressor with its best step count
TABLES = (
    Table(
        "diabetes",
        "sklearn load_diabetes",
        _sklearn(datasets.load_diabetes),
        (0.400, "autofeat, 1 step"),
    ),
    Table("breast_cancer", "sklearn load_breast_cancer", _sklearn(datasets.load_breast_cancer)),
    Table("wine", "sklearn load_wine", _sklearn(datasets.load_wine)),
    Table("iris", "sklearn load_iris", _sklearn(datasets.load_iris)),
    Table("digits", "sklearn load_digits", _sklearn(datasets.load_digits)),
    Table("linnerud", "sklearn load_linnerud (Weight)", _linnerud),
    Table(
        "concrete",
        "UCI concrete compressive strength",
        _committed("concrete", "strength"),
        (0.868, "autofeat, 2 steps"),
    ),
    Table(
        "airfoil",
        "UCI airfoil self-noise",
        _committed("airfoil", "sound_db"),
        (0.842, "autofeat, 2 steps"),
    ),
    Table(
        "wine_quality_white",
        "UCI wine quality (white)",
        _committed("wine_quality_white", "quality"),
        (0.384, "autofeat, 2 steps, red+white"),
    ),
)


def baseline(name: str, task_type: str) -> BaseEstimator:
    """One untuned scikit-learn baseline."""
    regression = task_type == "regression"
    if name == "linear":
        linear = LinearRegression() if regression else LogisticRegression(max_iter=5000)
        return make_pipeline(StandardScaler(), linear)
    if name == "random_forest":
        forest = RandomForestRegressor if regression else RandomForestClassifier
        return forest(random_state=SEED)
    if name == "hist_gradient_boosting":
        boosting = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        return boosting(random_state=SEED)
    raise ValueError(name)


def score(task_type: str, truth: Any, predicted: Any) -> float:
    if task_type == "regression":
        return float(r2_score(truth, predicted))
    return float(accuracy_score(truth, predicted))


def run_table(table: Table, scratch: Path) -> dict[str, Any]:
    """mlworker and the baselines on one table; a raw exception is recorded, not raised."""
    from config import Settings
    from tasks.automl.options import AutoMLOptions
    from tasks.automl.pipeline import prepare_split, run_automl

    for name in ("input", "output"):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    settings = Settings(input_root=scratch / "input", output_root=scratch / "output")
    frame = table.load()
    frame.to_csv(settings.input_root / f"{table.name}.csv", index=False)
    options = AutoMLOptions(target=TARGET)
    row: dict[str, Any] = {
        "table": table.name,
        "source": table.source,
        "rows": len(frame),
        "features": frame.shape[1] - 1,
    }
    started = time.perf_counter()
    try:
        result = run_automl(f"{table.name}.csv", options, settings=settings)
    except Exception as exc:  # the bench reports every failure; the done-when counts them
        row["error"] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=8)
        return row
    row["mlworker_seconds"] = round(time.perf_counter() - started, 2)
    metric = "r2" if result.task_type == "regression" else "accuracy"
    row.update(
        task_type=result.task_type,
        task_type_reason=result.task_type_reason,
        metric=metric,
        mlworker=round(result.metrics[metric], 4),
        chosen_model=result.chosen_model["name"],
        leaderboard=result.leaderboard,
        engineered=result.features["engineered"],
        phase_seconds=result.phase_seconds,
        mode=result.mode,
    )
    data = prepare_split(f"{table.name}.csv", options, settings=settings)
    assert data.task_type == result.task_type and len(data.y_test) == result.metrics["test_rows"]
    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name in BASELINES:
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = baseline(name, data.task_type).fit(data.x_train, data.y_train)
            scores[name] = round(score(data.task_type, data.y_test, model.predict(data.x_test)), 4)
        seconds[name] = round(time.perf_counter() - began, 2)
    best = max(scores, key=lambda n: scores[n])
    row.update(
        baselines=scores,
        baseline_seconds=seconds,
        best_baseline=best,
        gap=round(row["mlworker"] - scores[best], 4),
        test_rows=len(data.y_test),
    )
    if table.published is not None:
        row["autofeat_published_r2"], row["autofeat_published_setup"] = table.published
    return row


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| table | rows | task | metric | mlworker | linear | RF | HGB | best baseline | gap "
        "| mlworker s | autofeat published |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['table']} | {row['rows']} | ERROR: {row['error']} |")
            continue
        base = row["baselines"]
        published = row.get("autofeat_published_r2")
        lines.append(
            f"| {row['table']} | {row['rows']} | {row['task_type']} | {row['metric']} "
            f"| {row['mlworker']:.3f} | {base['linear']:.3f} | {base['random_forest']:.3f} "
            f"| {base['hist_gradient_boosting']:.3f} | {_short(row['best_baseline'])} "
            f"| {row['gap']:+.3f} | {row['mlworker_seconds']:.1f} "
            f"| {'' if published is None else f'{published:.3f}'} |"
        )
    return "\n".join(lines)


def _short(name: str) -> str:
    return {"random_forest": "RF", "hist_gradient_boosting": "HGB"}.get(name, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.automl_quality", description=__doc__)
    parser.add_argument(
        "--tables", help="comma-separated subset of: " + ", ".join(t.name for t in TABLES)
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen: tuple[Table, ...] = TABLES
    if args.tables:
        wanted = set(args.tables.split(","))
        chosen = tuple(t for t in TABLES if t.name in wanted)
        unknown = wanted - {t.name for t in chosen}
        if unknown:
            parser.error(f"unknown tables {sorted(unknown)}")
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlworker-automl-quality-") as scratch:
        for table in chosen:
            row = run_table(table, Path(scratch) / table.name)
            rows.append(row)
            shown = (
                row.get("error") or f"{row['metric']} {row['mlworker']:.3f} gap {row['gap']:+.3f}"
            )
            print(f"{table.name}: {shown}", flush=True)
    total = round(time.perf_counter() - started, 1)
    behind = [r["table"] for r in rows if "error" not in r and r["gap"] < -TOLERANCE]
    errors = [r["table"] for r in rows if "error" in r]
    print()
    print(markdown(rows))
    print(
        f"\n{len(rows)} tables in {total} s; behind the best baseline by more than "
        f"{TOLERANCE}: {behind or 'none'}; errors: {errors or 'none'}"
    )
    payload = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "tolerance": TOLERANCE,
        "seconds": total,
        "behind_best_baseline": behind,
        "errors": errors,
        "tables": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
    print(f"wrote {args.output}")
    return 1 if errors else 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
