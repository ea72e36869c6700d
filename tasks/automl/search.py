"""A small scikit-learn model search: linear and tree ensembles, chosen by cross-validation."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from tasks.automl.planner import Plan

#: rows transformed and predicted at a time (held-out scoring and ``tasks.automl_predict``)
PREDICT_CHUNK_ROWS = 20_000
#: ridge penalties tried by RidgeCV's efficient leave-one-out
RIDGE_ALPHAS = np.logspace(-3, 3, 13)
#: forest trees grow to single-row leaves (scikit-learn's default): against 2-row leaves, 5-fold
#: CV on the training rows of the bench.automl_quality tables gained 0.002-0.018 on every one
#: of six; memory stays bounded by the leaf cap below
FOREST_MIN_SAMPLES_LEAF = 1
#: leaves per forest tree; a tree holds ~2x leaves nodes of ~80 B, so 200 trees stay ~130 MB
#: whatever the row count (unbounded, 100k rows grew ~7 MB per tree)
FOREST_MAX_LEAVES = 4_000


@dataclass
class SearchOutcome:
    """The refitted winner and every candidate's cross-validation score."""

    name: str
    estimator: Any
    cv_score: float
    leaderboard: list[dict[str, Any]]
    scoring: str


def build_candidate(name: str, task_type: str, plan: Plan, seed: int) -> BaseEstimator:
    """One untrained candidate, sized by the plan (trees, leaves, threads)."""
    regression = task_type == "regression"
    if name == "linear":
        linear = RidgeCV(alphas=RIDGE_ALPHAS) if regression else LogisticRegression(max_iter=2000)
        return make_pipeline(StandardScaler(), linear)
    if name == "random_forest":
        forest = RandomForestRegressor if regression else RandomForestClassifier
        return forest(
            n_estimators=plan.n_estimators,
            min_samples_leaf=FOREST_MIN_SAMPLES_LEAF,
            max_leaf_nodes=FOREST_MAX_LEAVES,
            n_jobs=plan.n_jobs,
            random_state=seed,
        )
    if name == "gradient_boosting":
        boosting = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        return boosting(max_iter=plan.n_estimators, early_stopping="auto", random_state=seed)
    raise ValueError(f"unknown candidate {name!r}")


def search_models(
    x: NDArray[Any],
    y: NDArray[Any],
    task_type: str,
    plan: Plan,
    *,
    folds: int,
    seed: int,
    deadline: float | None,
    progress: Callable[[float], None] | None = None,
) -> SearchOutcome:
    """Cross-validate the plan's candidates (stopping at ``deadline``), refit the best on all.

    ``progress(done)`` is called after each candidate with the share of the search behind
    (the final refit counts as one more step).
    """
    scoring = "r2" if task_type == "regression" else "accuracy"
    splitter = _splitter(task_type, y, folds, seed)
    leaderboard: list[dict[str, Any]] = []
    with threadpool_limits(plan.n_jobs), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in plan.candidates:
            if deadline is not None and leaderboard and time.monotonic() > deadline:
                leaderboard.append({"model": name, "skipped": "time budget spent"})
                continue
            started = time.perf_counter()
            estimator = build_candidate(name, task_type, plan, seed)
            scores = cross_val_score(estimator, x, y, cv=splitter, scoring=scoring, n_jobs=1)
            leaderboard.append(
                {
                    "model": name,
                    "cv_score": round(float(np.mean(scores)), 6),
                    "cv_std": round(float(np.std(scores)), 6),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
            if progress is not None:
                progress(len(leaderboard) / (len(plan.candidates) + 1))
        scored = [row for row in leaderboard if "cv_score" in row]
        best = max(scored, key=lambda row: row["cv_score"])
        winner = build_candidate(best["model"], task_type, plan, seed).fit(x, y)
    return SearchOutcome(best["model"], winner, best["cv_score"], leaderboard, scoring)


def predict_in_chunks(
    estimator: Any,
    transform: Callable[[pd.DataFrame], NDArray[Any]],
    frame: pd.DataFrame,
    chunk_rows: int = PREDICT_CHUNK_ROWS,
) -> NDArray[Any]:
    """``estimator.predict(transform(rows))`` ``chunk_rows`` rows at a time, on one
    thread: the engineered matrix of a large table never has to fit in memory whole (200k
    rows x 300 features take ~700 MB with autofeat's copies)."""
    parts = []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(frame), chunk_rows):
            chunk = transform(frame.iloc[start : start + chunk_rows])
            parts.append(np.asarray(estimator.predict(chunk)))
    return np.concatenate(parts) if parts else np.empty(0)


def held_out_metrics(predicted: NDArray[Any], y: NDArray[Any], task_type: str) -> dict[str, float]:
    """Metrics on rows the search never saw."""
    if task_type == "regression":
        return {
            "r2": round(float(r2_score(y, predicted)), 6),
            "rmse": round(float(np.sqrt(mean_squared_error(y, predicted))), 6),
            "mae": round(float(mean_absolute_error(y, predicted)), 6),
            "test_rows": float(len(y)),
        }
    return {
        "accuracy": round(float(accuracy_score(y, predicted)), 6),
        "f1_macro": round(float(f1_score(y, predicted, average="macro")), 6),
        "test_rows": float(len(y)),
    }


def _splitter(task_type: str, y: NDArray[Any], folds: int, seed: int) -> KFold | StratifiedKFold:
    if task_type == "classification" and np.bincount(y).min() >= folds:
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)
