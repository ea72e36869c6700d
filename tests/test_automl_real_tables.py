"""The real AutoML pipeline on small real tables (scikit-learn's bundled sets): no exception,
the task type detected with its reason, and a held-out score a broken pipeline would miss.

Floors sit well under what the default options reach (``python -m bench.automl_quality``:
diabetes R² 0.35, iris and wine accuracy 1.0) and well over what a constant or shuffled
model would score (R² <= 0, accuracy ~0.33-0.40).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris, load_wine

from config import Settings
from tasks.automl import AutoMLOptions, predict, run_automl
from tasks.automl.pipeline import prepare_split

#: table -> (loader, task type, reason starts with, metric, floor)
CASES = {
    "iris": (load_iris, "classification", "auto: 3 distinct integer values over 150 rows",
             "accuracy", 0.85),
    "wine": (load_wine, "classification", "auto: 3 distinct integer values over 178 rows",
             "accuracy", 0.85),
    "diabetes": (load_diabetes, "regression", "auto: 214 distinct integer values over 442 rows",
                 "r2", 0.3),
}  # fmt: skip


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = tmp_path_factory.mktemp("real-tables")
    for name in ("input", "output"):
        (base / name).mkdir()
    for name, (loader, *_) in CASES.items():
        loader(as_frame=True).frame.to_csv(base / "input" / f"{name}.csv", index=False)
    return Settings(input_root=base / "input", output_root=base / "output")


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_table_scores_above_floor(settings: Settings, name: str) -> None:
    """Default options on a real table: detected task and reason, held-out score over the floor,
    the same held-out rows as ``prepare_split`` gives baselines, and a model that predicts."""
    _, task_type, reason, metric, floor = CASES[name]
    result = run_automl(f"{name}.csv", AutoMLOptions(target="target"), settings=settings)
    assert result.task_type == task_type
    assert result.task_type_reason.startswith(reason), result.task_type_reason
    assert result.metrics[metric] > floor, (result.metrics, result.leaderboard)
    split = prepare_split(f"{name}.csv", AutoMLOptions(target="target"), settings=settings)
    assert split.task_type == task_type and len(split.y_test) == result.metrics["test_rows"]
    predictions = predict(result.model_path, f"{name}.csv", settings=settings)
    assert len(predictions) == len(split.y_train) + len(split.y_test)


def test_tiny_numeric_target_with_few_values_is_regression_and_says_why(tmp_path: Path) -> None:
    """30 rows whose integer target has 3 values: too few rows per value to train classes on,
    so auto-detection takes them as quantities and says why (it used to pick classification
    and refuse the table)."""
    for name in ("input", "output"):
        (tmp_path / name).mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    frame = pd.DataFrame(x, columns=["a", "b"]).assign(target=np.arange(30) % 3)
    frame.to_csv(tmp_path / "input" / "tiny.csv", index=False)
    settings = Settings(input_root=tmp_path / "input", output_root=tmp_path / "output")
    result = run_automl("tiny.csv", AutoMLOptions(target="target"), settings=settings)
    assert result.task_type == "regression"
    assert result.task_type_reason == (
        "auto: 3 distinct integer values over 30 rows: at most 20 values with at least 10 rows "
        "each on average, but as classes class 0 has 10 rows; with test_size 0.2 each class "
        "needs at least 16; so regression"
    )
    assert np.isfinite(result.metrics["r2"])
    requested = AutoMLOptions(target="target", task_type="classification")
    with pytest.raises(Exception, match="task_type='regression'"):
        run_automl("tiny.csv", requested, settings=settings)  # asked for: refused, with a hint
