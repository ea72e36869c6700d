"""autofeat feature engineering on a planned sample, reusable on any rows afterwards."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from autofeat import AutoFeatClassifier, AutoFeatRegressor
from numpy.typing import NDArray
from sklearn.feature_selection import f_classif, f_regression

from tasks.automl.planner import Plan

#: autofeat builds sympy symbols from column names; neutral names avoid clashes such as "E"
_SYMBOL = re.compile(r"\bx(\d{3,})\b")


@dataclass
class EngineeredFeatures:
    """A fitted autofeat model plus the fill values for non-finite engineered values."""

    model: Any
    input_names: list[str]
    fill: NDArray[Any]

    @property
    def formulas(self) -> list[str]:
        """New features as formulas over the input column names."""
        return [self.readable(c) for c in self.model.new_feat_cols_]

    @property
    def engineered_from(self) -> list[str]:
        return [self.readable(c) for c in self.model.feateng_cols_]

    def readable(self, expression: str) -> str:
        return _SYMBOL.sub(lambda m: self.input_names[int(m.group(1))], str(expression))

    def transform(self, matrix: pd.DataFrame) -> NDArray[Any]:
        """Original plus engineered columns as float32, non-finite values replaced."""
        renamed = matrix.set_axis(_symbols(len(matrix.columns)), axis=1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.transform(renamed).to_numpy(dtype=np.float32)
        return _fill(out, self.fill)


def engineer_features(
    matrix: pd.DataFrame, target: NDArray[Any], task_type: str, plan: Plan, seed: int
) -> EngineeredFeatures:
    """Fit autofeat on ``plan.feateng_rows`` sampled rows, expanding the strongest columns."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(matrix))[: plan.feateng_rows]
    sample = matrix.iloc[rows].reset_index(drop=True)
    sample_target = target[rows]
    names = _symbols(len(matrix.columns))
    sample.columns = names
    chosen = _strongest(sample, sample_target, task_type, plan.feateng_cols)
    factory = AutoFeatRegressor if task_type == "regression" else AutoFeatClassifier
    model = factory(
        feateng_cols=chosen,
        feateng_steps=plan.feateng_steps,
        featsel_runs=plan.featsel_runs,
        max_gb=plan.max_gb,
        transformations=list(plan.transformations),
        n_jobs=plan.n_jobs,
        verbose=0,
    )
    np.random.seed(seed)  # autofeat samples with the global RNG; make runs repeatable
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = model.fit_transform(sample, sample_target).to_numpy(dtype=np.float32)
    fitted[~np.isfinite(fitted)] = np.nan
    fill = np.nan_to_num(np.nanmedian(fitted, axis=0)).astype(np.float32)
    return EngineeredFeatures(model, list(matrix.columns), fill)


def _strongest(sample: pd.DataFrame, target: NDArray[Any], task_type: str, k: int) -> list[str]:
    """The ``k`` non-binary columns with the highest univariate F score against the target."""
    candidates = [c for c in sample.columns if sample[c].nunique() > 2]
    if not candidates:
        return list(sample.columns[:1])
    score = f_regression if task_type == "regression" else f_classif
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f_values, _ = score(sample[candidates].to_numpy(dtype=np.float64), target)
    order = np.argsort(-np.nan_to_num(f_values, nan=-1.0), kind="stable")
    return [candidates[i] for i in order[: max(k, 1)]]


def _symbols(count: int) -> list[str]:
    return [f"x{i:03d}" for i in range(count)]


def _fill(matrix: NDArray[Any], fill: NDArray[Any]) -> NDArray[Any]:
    bad = ~np.isfinite(matrix)
    if bad.any():
        matrix[bad] = np.take(fill, np.nonzero(bad)[1])
    return matrix
