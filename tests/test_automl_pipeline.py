"""AutoML pipeline tests: no broker, real autofeat and scikit-learn on small tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from autofeat.feateng import n_cols_generated
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from config import Settings
from tasks.automl import AutoMLOptions, loading, predict, run_automl
from tasks.automl.planner import LIGHTWEIGHT, NORMAL, fits, plan_job
from worker.errors import InvalidInput, PathOutsideRoot, UnreadableInput


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    for name in ("input", "output"):
        (tmp_path / name).mkdir()
    return Settings(input_root=tmp_path / "input", output_root=tmp_path / "output")


def _diabetes(root: Path) -> pd.DataFrame:
    frame = load_diabetes(as_frame=True).frame
    frame.to_csv(root / "diabetes.csv", index=False)
    return frame


def test_loading_shrinks_dtypes_and_reports_bytes(tmp_path: Path) -> None:
    """Ints downcast, floats in float32 range shrink, repeated strings become categories."""
    frame = pd.DataFrame(
        {
            "small": np.arange(1000) % 7,
            "exact": np.arange(1000) / 4,
            "huge": np.arange(1000) * 1e300,
            "colour": ["red", "green"] * 500,
        }
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = loading.load_table(tmp_path / "t.csv")
    dtypes = table.frame.dtypes
    assert dtypes["small"] == np.uint8 and dtypes["exact"] == np.float32
    assert dtypes["huge"] == np.float64  # float32 would overflow to inf
    assert isinstance(dtypes["colour"], pd.CategoricalDtype)
    assert table.bytes_after < table.bytes_before / 2


def test_chunked_csv_unites_categories_and_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks with different category levels concatenate; max_rows samples while reading."""
    monkeypatch.setattr(loading, "CHUNK_ROWS", 100)
    frame = pd.DataFrame({"k": ["a"] * 500 + ["b"] * 500, "v": np.arange(1000)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    full = loading.load_table(tmp_path / "t.csv")
    assert full.chunks == 10 and list(full.frame["k"].cat.categories) == ["a", "b"]
    sampled = loading.load_table(tmp_path / "t.csv", max_rows=200, estimated_rows=1000)
    assert 150 <= len(sampled.frame) <= 200 and sampled.rows_read == 1000


def test_planner_bounds_generated_features_and_shrinks_to_budget() -> None:
    """Generated features stay under the tier bound; a tight budget samples rows or refuses."""
    roomy = plan_job(
        mode="normal", task_type="regression", rows=10**6, features=50,
        budget_mb=4096, baseline_mb=400, n_jobs=2,
    )  # fmt: skip
    assert roomy.max_generated <= NORMAL.max_generated and fits(roomy, 4096)
    assert n_cols_generated(roomy.feateng_cols, 2, len(NORMAL.transformations)) <= 300
    assert "random_forest" not in roomy.candidates
    tight = plan_job(
        mode="normal", task_type="regression", rows=10**6, features=50,
        budget_mb=600, baseline_mb=400, n_jobs=2,
    )  # fmt: skip
    assert tight.feateng_rows < roomy.feateng_rows and tight.estimated_peak_mb <= 600
    light = plan_job(
        mode="lightweight", task_type="regression", rows=10**6, features=50,
        budget_mb=450, baseline_mb=400, n_jobs=2,
    )  # fmt: skip
    assert light.max_generated <= LIGHTWEIGHT.max_generated and not fits(light, 450)


def test_diabetes_beats_linear_baseline_and_model_predicts(settings: Settings) -> None:
    """A regression job beats plain least squares on the held-out rows; its model reloads."""
    frame = _diabetes(settings.input_root)
    reported: list[tuple[float, str]] = []
    result = run_automl(
        "diabetes.csv",
        AutoMLOptions(target="target"),
        settings=settings,
        progress=lambda fraction, phase: reported.append((fraction, phase)),
    )
    steps = [phase for _, phase in reported]  # progress: each public phase, in order
    assert list(dict.fromkeys(steps)) == [
        "loading",
        "feature_engineering",
        "model_search",
        "scoring",
    ]
    assert [f for f, _ in reported] == sorted(f for f, _ in reported) and reported[0][0] == 0.0
    x_train, x_test, y_train, y_test = train_test_split(
        frame.drop(columns="target"), frame["target"], test_size=0.2, random_state=0
    )
    baseline = LinearRegression().fit(x_train, y_train).score(x_test, y_test)
    assert result.mode == "normal" and result.metrics["r2"] >= baseline
    assert result.features["engineered_from"] and result.memory.peak_rss_mb > 0
    phases = result.memory.phase_peak_rss_mb  # which step reached the peak
    assert {"load", "feature_engineering_normal", "model_search_normal", "evaluate"} <= set(phases)
    assert max(phases.values()) == result.memory.peak_rss_mb
    assert {"load", "feature_engineering_normal", "model_search_normal"} <= set(
        result.phase_seconds
    )
    predictions = predict(result.model_path, "diabetes.csv", settings=settings)
    assert len(predictions) == len(frame) and all(isinstance(p, float) for p in predictions)


def test_budget_too_small_for_normal_plan_runs_lightweight(settings: Settings) -> None:
    """When the normal plan's estimate exceeds the budget the job runs light and says why."""
    _diabetes(settings.input_root)
    # the budget is what the job may add to its starting RSS: 110 MB is below the normal
    # plan's fixed ~120 MB, above the lightweight plan's ~85 MB
    options = AutoMLOptions(target="target", memory_budget_mb=110)
    result = run_automl("diabetes.csv", options, settings=settings)
    assert result.mode == "lightweight" and "budget" in result.mode_reason
    assert result.plan["feateng_steps"] == 1 and result.plan["n_jobs"] == 1


BAD_TABLES = {
    "empty.csv": ("", UnreadableInput, "is empty"),
    "header.csv": ("a,target\n", UnreadableInput, "no data rows"),
    "one_class.csv": ("a,target\n" + "".join(f"{i},x\n" for i in range(30)), InvalidInput,
                      "one class"),
    "all_nan.csv": ("a,b,target\n" + "".join(f"{i},,{i % 2}\n" for i in range(30)),
                    InvalidInput, "'b' is empty"),
    "junk.csv": ("a,target\n" + "".join(f"{'oops' if i == 7 else i},{i % 2}\n"
                                        for i in range(30)), InvalidInput, "non-numeric"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_bad_tables_fail_with_clear_errors(settings: Settings, name: str) -> None:
    """Empty, header-only, one-class, all-NaN and junk tables each name their problem."""
    text, error, message = BAD_TABLES[name]
    (settings.input_root / name).write_text(text)
    with pytest.raises(error, match=message):
        run_automl(name, AutoMLOptions(target="target"), settings=settings)


def test_bad_paths_and_targets_fail_with_clear_errors(settings: Settings, tmp_path: Path) -> None:
    """Missing file, path outside the root and unknown target are refused before any work."""
    _diabetes(settings.input_root)
    (tmp_path / "outside.csv").write_text("a,target\n1,2\n")
    with pytest.raises(InvalidInput, match="does not exist"):
        run_automl("nope.csv", AutoMLOptions(target="target"), settings=settings)
    with pytest.raises(PathOutsideRoot):
        run_automl("../outside.csv", AutoMLOptions(target="target"), settings=settings)
    with pytest.raises(InvalidInput, match="'price' is not in the data"):
        run_automl("diabetes.csv", AutoMLOptions(target="price"), settings=settings)
    with pytest.raises(InvalidInput, match="test_size"):
        AutoMLOptions.from_kwargs({"target": "target", "test_size": 2})
