"""autofeat feature engineering on a planned sample, reusable on any rows afterwards.

Columns that are constant on the sample stay out of autofeat (its standard scaling turns them
into NaN, which its selection then refuses) and are appended to its output unchanged, and so
do, for classification, the columns it does not engineer from (its L1 logistic selection's time
grows with every column it sees, see ``planner.CLASSIFICATION_SELECTION_UNITS``); a
classification sample keeps ``MIN_TRAIN_ROWS_PER_CLASS`` rows of every class so autofeat's
5-fold selection always has enough of each.
"""

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
from tasks.automl.prepare import MIN_TRAIN_ROWS_PER_CLASS

#: autofeat builds sympy symbols from column names; neutral names avoid clashes such as "E"
_SYMBOL = re.compile(r"\bx(\d{3,})\b")


@dataclass
class EngineeredFeatures:
    """A fitted autofeat model plus the fill values for non-finite engineered values."""

    #: None when every column was constant on the sample (no engineering)
    model: Any
    input_names: list[str]
    fill: NDArray[Any]
    #: input columns kept out of autofeat (constant on its sample), appended after its output;
    #: a class attribute too, so models saved before it existed load with none
    aside: tuple[int, ...] = ()

    @property
    def formulas(self) -> list[str]:
        """New features as formulas over the input column names."""
        new = self.model.new_feat_cols_ if self.model is not None else []
        return [self.readable(c) for c in new]

    @property
    def engineered_from(self) -> list[str]:
        used = self.model.feateng_cols_ if self.model is not None else []
        return [self.readable(c) for c in used]

    def readable(self, expression: str) -> str:
        return _SYMBOL.sub(lambda m: self.input_names[int(m.group(1))], str(expression))

    def transform(self, matrix: pd.DataFrame) -> NDArray[Any]:
        """Original plus engineered columns as float32, non-finite values replaced."""
        renamed = matrix.set_axis(_symbols(len(matrix.columns)), axis=1)
        fed, aside = _split_aside(renamed, self.aside)
        if self.model is None:
            return _fill(aside.to_numpy(dtype=np.float32), self.fill)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.transform(fed).to_numpy(dtype=np.float32)
        if self.aside:
            out = np.hstack([out, aside.to_numpy(dtype=np.float32)])
        return _fill(out, self.fill)


def engineer_features(
    matrix: pd.DataFrame, target: NDArray[Any], task_type: str, plan: Plan, seed: int
) -> EngineeredFeatures:
    """Fit autofeat on ``plan.feateng_rows`` sampled rows, expanding the strongest columns."""
    rows = _sample_rows(target, plan.feateng_rows, task_type, seed)
    sample = matrix.iloc[rows].reset_index(drop=True)
    sample_target = target[rows]
    sample.columns = _symbols(len(matrix.columns))
    full = sample
    constant = sample.max() == sample.min()
    aside = tuple(int(i) for i in np.flatnonzero(constant.to_numpy()))
    sample, kept_aside = _split_aside(sample, aside)
    if not len(sample.columns):
        fill = np.zeros(len(aside), dtype=np.float32)
        return EngineeredFeatures(None, list(matrix.columns), fill, aside)
    chosen = _strongest(sample, sample_target, task_type, plan.feateng_cols)
    if task_type == "classification":  # selection time grows with every column it sees
        others = [int(c[1:]) for c in sample.columns if c not in chosen]
        aside = tuple(sorted((*aside, *others)))
        sample, kept_aside = _split_aside(full, aside)
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
    if aside:
        fitted = np.hstack([fitted, kept_aside.to_numpy(dtype=np.float32)])
    fitted[~np.isfinite(fitted)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-NaN engineered column: its fill is 0
        fill = np.nan_to_num(np.nanmedian(fitted, axis=0)).astype(np.float32)
    return EngineeredFeatures(model, list(matrix.columns), fill, aside)


def _sample_rows(target: NDArray[Any], count: int, task_type: str, seed: int) -> NDArray[Any]:
    """``count`` random rows; for classification topped up so that every class keeps at least
    ``MIN_TRAIN_ROWS_PER_CLASS`` of its rows (a rare class could otherwise get 1-4)."""
    order = np.random.default_rng(seed).permutation(len(target))
    rows, rest = order[:count], order[count:]
    if task_type == "regression" or not len(rest):
        return rows
    have = np.bincount(target[rows], minlength=int(target.max()) + 1)
    extra = [
        rest[target[rest] == label][: MIN_TRAIN_ROWS_PER_CLASS - have[label]]
        for label in np.flatnonzero(have < MIN_TRAIN_ROWS_PER_CLASS)
    ]
    return np.concatenate([rows, *extra])


def _split_aside(frame: pd.DataFrame, aside: tuple[int, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` without and with only its ``aside`` columns (by position)."""
    if not aside:
        return frame, frame.iloc[:, []]
    mask = np.zeros(len(frame.columns), dtype=bool)
    mask[list(aside)] = True
    return frame.loc[:, ~mask], frame.loc[:, mask]


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
