"""Turn a loaded table into a numeric, NaN-free matrix and a target, refusing unusable input.

autofeat refuses NaNs and non-numeric values, so every column is checked here first and each
problem becomes an ``InvalidInput`` that names the column. The fitted ``Encoder`` is saved with
the model so predictions see exactly the same encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from tasks.automl.options import TaskType
from worker.errors import InvalidInput

#: integer targets with at most this many distinct values are classes, not quantities
MAX_AUTO_CLASSES = 20
#: categories with at most this many levels are one-hot encoded; more become integer codes
ONE_HOT_MAX_LEVELS = 16
#: a text column where at least this share parses as numbers is a numeric column with junk
NUMERIC_SHARE_FOR_JUNK = 0.5
#: fewer labelled rows than this cannot give a held-out split plus cross-validation
MIN_ROWS = 20


@dataclass
class Encoder:
    """Median imputation and category encoding, fitted on training rows only."""

    columns: list[str]
    medians: dict[str, float]
    one_hot: dict[str, list[str]]
    codes: dict[str, list[str]]

    @property
    def output_names(self) -> list[str]:
        names: list[str] = []
        for column in self.columns:
            if column in self.one_hot:
                names.extend(f"{column}={level}" for level in self.one_hot[column])
            else:
                names.append(column)
        return names

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A float32 frame with no NaN, in ``output_names`` order."""
        parts: dict[str, NDArray[Any]] = {}
        for column in self.columns:
            values = frame[column]
            if column in self.one_hot:
                text = values.astype(object).astype(str).to_numpy()
                for level in self.one_hot[column]:
                    parts[f"{column}={level}"] = (text == level).astype(np.float32)
                continue
            if column in self.codes:
                categories = pd.CategoricalDtype(self.codes[column])
                numbers = values.astype(object).astype(str).astype(categories).cat.codes
                values = numbers.astype(np.float32).where(numbers >= 0)
            numeric = pd.to_numeric(values, errors="coerce").astype(np.float32)
            parts[column] = numeric.fillna(self.medians[column]).to_numpy(dtype=np.float32)
        return pd.DataFrame(parts, index=frame.index)


def check_columns(
    available: Sequence[str], target: str, feature_columns: Sequence[str] | None
) -> list[str]:
    """The feature columns to read, after checking the target and requested columns exist."""
    shown = ", ".join(list(available)[:20])
    if target not in available:
        raise InvalidInput("target", f"column {target!r} is not in the data; columns: {shown}")
    if feature_columns is None:
        return [c for c in available if c != target]
    missing = [c for c in feature_columns if c not in available]
    if missing:
        raise InvalidInput("feature_columns", f"{missing} not in the data; columns: {shown}")
    return list(feature_columns)


def resolve_target(
    frame: pd.DataFrame, target: str, task_type: TaskType
) -> tuple[pd.DataFrame, NDArray[Any], str, list[object] | None]:
    """Drop unlabelled rows; return features, the target (class indices), task type, classes."""
    labels = frame[target]
    if labels.isna().all():
        raise InvalidInput("target", f"column {target!r} has no values")
    frame = frame.loc[labels.notna()]
    labels = labels.loc[labels.notna()]
    if len(frame) < MIN_ROWS:
        raise InvalidInput(
            "data_path", f"needs at least {MIN_ROWS} labelled rows, has {len(frame)}"
        )
    kind = task_type if task_type != "auto" else _detect_task(labels)
    features = frame.drop(columns=[target])
    if kind == "regression":
        numbers = pd.to_numeric(labels.astype(object), errors="coerce")
        _refuse_junk(target, labels, numbers, field="target")
        if numbers.nunique() < 2:
            raise InvalidInput("target", f"column {target!r} is constant; nothing to predict")
        return features, numbers.to_numpy(dtype=np.float64), "regression", None
    codes, classes = pd.factorize(labels.astype(object), sort=True)
    if len(classes) < 2:
        raise InvalidInput(
            "target", f"column {target!r} has one class ({classes[0]!r}); need at least two"
        )
    return features, codes.astype(np.int64), "classification", [_plain(c) for c in classes]


def fit_encoder(frame: pd.DataFrame) -> Encoder:
    """Check every feature column and learn its imputation and encoding from ``frame``."""
    medians: dict[str, float] = {}
    one_hot: dict[str, list[str]] = {}
    codes: dict[str, list[str]] = {}
    for column in frame.columns:
        values = frame[column]
        if values.isna().all():
            raise InvalidInput("data_path", f"column {column!r} is empty (every value missing)")
        if values.dtype.kind in "biuf":
            medians[column] = float(pd.to_numeric(values).median())
            continue
        numbers = pd.to_numeric(values.astype(object), errors="coerce")
        if numbers.notna().mean() >= NUMERIC_SHARE_FOR_JUNK * values.notna().mean():
            _refuse_junk(column, values, numbers, field="data_path")
            medians[column] = float(numbers.median())
            continue
        levels = sorted(values.dropna().astype(object).astype(str).unique())
        if not isinstance(values.dtype, pd.CategoricalDtype) and len(levels) > ONE_HOT_MAX_LEVELS:
            raise InvalidInput(
                "data_path",
                f"column {column!r} is free text ({len(levels)} distinct values); "
                "leave it out with feature_columns",
            )
        if len(levels) <= ONE_HOT_MAX_LEVELS:
            one_hot[column] = levels
        else:
            codes[column] = levels
            medians[column] = -1.0  # unseen or missing category
    return Encoder(list(frame.columns), medians, one_hot, codes)


def _detect_task(labels: pd.Series) -> str:
    kind = labels.dtype.kind
    if kind in "bOSU" or isinstance(labels.dtype, pd.CategoricalDtype):
        numbers = pd.to_numeric(labels.astype(object), errors="coerce")
        if numbers.notna().all():
            return _detect_task(numbers)
        return "classification"
    integral = kind in "iu" or bool(np.all(np.mod(labels.to_numpy(dtype=float), 1) == 0))
    return "classification" if integral and labels.nunique() <= MAX_AUTO_CLASSES else "regression"


def _refuse_junk(column: str, raw: pd.Series, numbers: pd.Series, *, field: str) -> None:
    junk = raw.notna() & numbers.isna()
    if junk.any():
        examples = sorted({str(v) for v in raw[junk].head(50)})[:3]
        raise InvalidInput(
            field,
            f"column {column!r} is numeric but has {int(junk.sum())} non-numeric values "
            f"such as {examples}",
        )


def _plain(value: object) -> object:
    """A JSON-friendly class label (numpy scalars to Python)."""
    return value.item() if isinstance(value, np.generic) else value
