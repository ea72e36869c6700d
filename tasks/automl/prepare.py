"""Turn a loaded table into a numeric, NaN-free matrix and a target, refusing unusable input.

autofeat refuses NaNs and non-numeric values, so every column is checked here first and each
problem becomes an ``InvalidInput`` that names the column. The fitted ``Encoder`` is saved with
the model so predictions see exactly the same encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from tasks.automl.options import TaskType
from worker.errors import InputTooLarge, InvalidInput

#: integer targets with at most this many distinct values can be classes, not quantities
MAX_AUTO_CLASSES = 20
#: ... and only with at least this many rows per distinct value on average: 16 values over
#: 20 rows are measurements (and would leave one or two rows per class)
AUTO_CLASS_MIN_MEAN_ROWS = 10
#: categories with at most this many levels are one-hot encoded; more become integer codes
ONE_HOT_MAX_LEVELS = 16
#: a text column where at least this share parses as numbers is a numeric column with junk
NUMERIC_SHARE_FOR_JUNK = 0.5
#: fewer labelled rows than this cannot give a held-out split plus cross-validation
MIN_ROWS = 20
#: training rows every class needs: autofeat's feature selection cross-validates a
#: LogisticRegressionCV with a fixed 5 stratified folds on a random 85% of its rows, and
#: fails (raw ValueError) when a class has fewer rows than folds; from 12, fewer than 5
#: land in a subsample with p < 1e-4
MIN_TRAIN_ROWS_PER_CLASS = 12
#: columns a job reads (features plus target): 5,000 took 69 s on 100 rows (autofeat's
#: selection and the forests scale with the width); pick more with ``feature_columns``
MAX_COLUMNS = 2_000
#: the feature matrix is float32; larger magnitudes would become inf there
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
        """A float32 frame with no NaN or inf, in ``output_names`` order (non-finite values,
        including those past float32's range, get the column's training median)."""
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
            with np.errstate(over="ignore", invalid="ignore"):
                numeric = _as_float32(values)
            numeric[~np.isfinite(numeric)] = self.medians[column]
            parts[column] = numeric
        return pd.DataFrame(parts, index=frame.index)


@dataclass
class Target:
    """The labelled rows' features and target, and what the job decided about the task."""

    features: pd.DataFrame
    values: NDArray[Any]
    task_type: str
    classes: list[object] | None
    #: why this task type: the request, or what auto-detection weighed
    reason: str
    #: notes for the result's ``warnings`` (rows dropped for an infinite target, ...)
    notes: list[str] = field(default_factory=list)


def check_columns(
    available: Sequence[str], target: str, feature_columns: Sequence[str] | None
) -> list[str]:
    """The feature columns to read, after checking the target and requested columns exist."""
    shown = ", ".join(list(available)[:20])
    if target not in available:
        raise InvalidInput("target", f"column {target!r} is not in the data; columns: {shown}")
    if feature_columns is None:
        columns = [c for c in available if c != target]
        if not columns:
            raise InvalidInput("data_path", f"has no columns besides the target {target!r}")
        if len(columns) + 1 > MAX_COLUMNS:
            raise InputTooLarge(
                "data_path",
                f"has {len(columns) + 1} columns, over the {MAX_COLUMNS} a job reads; "
                "choose the features with feature_columns",
            )
        return columns
    missing = [c for c in feature_columns if c not in available]
    if missing:
        raise InvalidInput("feature_columns", f"{missing} not in the data; columns: {shown}")
    if len(feature_columns) + 1 > MAX_COLUMNS:
        raise InputTooLarge(
            "feature_columns", f"lists {len(feature_columns)} columns; at most {MAX_COLUMNS - 1}"
        )
    return list(feature_columns)


def resolve_target(
    frame: pd.DataFrame, target: str, task_type: TaskType, *, test_size: float = 0.2
) -> Target:
    """Drop unlabelled rows, check the features, decide the task type, encode the target.

    An infinite target counts as unlabelled (its row is dropped, with a note); the feature
    columns pass ``check_features``; classes (returned as indices) too small for the held-out
    split and autofeat's cross-validation are refused, except numbers that auto-detection took
    for classes: those are quantities then (regression, and the reason says why).
    """
    labels, notes = _finite_labels(frame[target], target)
    if labels.isna().all():
        raise InvalidInput("target", f"column {target!r} has no (finite) values")
    frame = frame.loc[labels.notna()]
    labels = labels.loc[labels.notna()]
    if len(frame) < MIN_ROWS:
        raise InvalidInput(
            "data_path", f"needs at least {MIN_ROWS} labelled rows, has {len(frame)}"
        )
    if task_type == "auto":
        kind, reason = detect_task(labels)
        short = _classes_too_small(labels, test_size) if kind == "classification" else None
        if short is not None:  # numeric labels a classifier could not train on: quantities
            kind, reason = "regression", f"{reason}, but {short}; so regression"
        reason = f"auto: {reason}"
    else:
        kind, reason = task_type, "requested"
    features = frame.drop(columns=[target])
    notes += check_features(features)
    if kind == "regression":
        numbers = pd.to_numeric(labels.astype(object), errors="coerce")
        _refuse_junk(target, labels, numbers, field="target")
        if numbers.nunique() < 2:
            raise InvalidInput("target", f"column {target!r} is constant; nothing to predict")
        if numbers.abs().max() > FLOAT32_MAX:
            raise InvalidInput(
                "target", f"column {target!r} has values past ±3.4e38 (float32); rescale it"
            )
        return Target(
            features, numbers.to_numpy(dtype=np.float64), "regression", None, reason, notes
        )
    codes, classes = pd.factorize(labels.astype(object), sort=True)
    if len(classes) < 2:
        raise InvalidInput(
            "target", f"column {target!r} has one class ({classes[0]!r}); need at least two"
        )
    numeric = labels.dtype.kind in "iuf"
    _refuse_small_classes(target, codes, list(classes), test_size, numeric=numeric)
    plain = [_plain(c) for c in classes]
    return Target(features, codes.astype(np.int64), "classification", plain, reason, notes)


def detect_task(labels: pd.Series) -> tuple[str, str]:
    """``("regression" | "classification", why)`` from the labels' dtype, values and rows."""
    kind = labels.dtype.kind
    if kind == "b":
        return "classification", "boolean values"
    if kind in "OSU" or isinstance(labels.dtype, pd.CategoricalDtype):
        numbers = pd.to_numeric(labels.astype(object), errors="coerce")
        if numbers.notna().all() and numbers.dtype.kind in "iuf":
            kind_, reason = detect_task(numbers)
            return kind_, f"numbers written as text; {reason}"
        return "classification", f"text labels ({labels.nunique()} distinct)"
    distinct, rows = int(labels.nunique()), len(labels)
    values = labels.to_numpy(dtype=np.float64)
    if kind == "f" and not bool(np.all(np.mod(values, 1) == 0)):
        return "regression", f"fractional numbers ({distinct} distinct over {rows} rows)"
    counted = f"{distinct} distinct integer values over {rows} rows"
    if distinct > MAX_AUTO_CLASSES:
        return "regression", f"{counted}: more than {MAX_AUTO_CLASSES} values"
    if rows < AUTO_CLASS_MIN_MEAN_ROWS * distinct:
        return "regression", f"{counted}: under {AUTO_CLASS_MIN_MEAN_ROWS} rows per value"
    return "classification", (
        f"{counted}: at most {MAX_AUTO_CLASSES} values with at least "
        f"{AUTO_CLASS_MIN_MEAN_ROWS} rows each on average"
    )


def _classes_too_small(labels: pd.Series, test_size: float) -> str | None:
    """Why numeric ``labels`` cannot be trained on as classes (``_refuse_small_classes``
    would refuse them), or None; None too for labels that are not numbers (text, booleans:
    those stay classes, and are refused naming the class)."""
    if labels.dtype.kind == "b":
        return None
    numbers = pd.to_numeric(labels.astype(object), errors="coerce")
    if not numbers.notna().all():
        return None
    if bool(np.all(np.mod(numbers.to_numpy(dtype=np.float64), 1) == 0)):
        numbers = numbers.astype(np.int64)  # name a class 1, not 1.0
    codes, classes = pd.factorize(numbers, sort=True)
    problem = _class_problem(codes, list(classes), test_size)
    if problem is None:
        return None
    field, text = problem
    return f"as classes {text}" if field == "target" else f"as classes test_size {text}"


def check_features(frame: pd.DataFrame) -> list[str]:
    """Refuse unusable feature columns over all labelled rows; notes on infinite values.

    Whole-table problems (an empty column, junk in a numeric column, free text, values past
    float32) are found here, before the split, so they are reported whatever the classes.
    """
    notes: list[str] = []
    for column in frame.columns:
        values = frame[column]
        numbers = _numbers(column, values)
        if numbers is None:
            continue
        infinite = int(np.isinf(numbers).sum())
        if infinite:
            notes.append(f"column {column!r}: {infinite} infinite values treated as missing")
        finite = numbers[np.isfinite(numbers)]
        if not len(finite):
            raise InvalidInput("data_path", f"column {column!r} is empty (no finite value)")
        if np.abs(finite).max() > FLOAT32_MAX:
            raise InvalidInput(
                "data_path", f"column {column!r} has values past ±3.4e38 (float32); rescale it"
            )
    return notes


def fit_encoder(frame: pd.DataFrame) -> Encoder:
    """Learn each (``check_features``-checked) column's imputation and encoding from ``frame``."""
    medians: dict[str, float] = {}
    one_hot: dict[str, list[str]] = {}
    codes: dict[str, list[str]] = {}
    for column in frame.columns:
        values = frame[column]
        if values.isna().all():  # values only in the held-out rows: nothing to learn
            medians[column] = 0.0
            continue
        numbers = _numbers(column, values)
        if numbers is not None:
            finite = numbers[np.isfinite(numbers)]
            # a column with values only in the held-out rows: nothing to impute from
            medians[column] = float(np.median(finite)) if len(finite) else 0.0
            continue
        levels = sorted(values.dropna().astype(object).astype(str).unique())
        if len(levels) <= ONE_HOT_MAX_LEVELS:
            one_hot[column] = levels
        else:
            codes[column] = levels
            medians[column] = -1.0  # unseen or missing category
    return Encoder(list(frame.columns), medians, one_hot, codes)


def refuse_constant(encoded: pd.DataFrame) -> None:
    """Refuse training rows on which every feature is constant: nothing to learn from."""
    if not len(encoded.columns) or bool((encoded.max() == encoded.min()).all()):
        raise InvalidInput("data_path", "every feature column is constant over the training rows")


def _numbers(column: str, values: pd.Series) -> NDArray[np.float64] | None:
    """A numeric column's values as float64 (NaN for missing); None for a category column.

    Raises for an empty column, a numeric column with non-numeric junk, and free text.
    """
    if values.isna().all():
        raise InvalidInput("data_path", f"column {column!r} is empty (every value missing)")
    if values.dtype.kind in "biuf":
        return _float64(values)
    numbers = pd.to_numeric(values.astype(object), errors="coerce")
    if numbers.notna().mean() >= NUMERIC_SHARE_FOR_JUNK * values.notna().mean():
        _refuse_junk(column, values, numbers, field="data_path")
        return _float64(numbers)
    levels = values.dropna().astype(object).astype(str).nunique()
    if not isinstance(values.dtype, pd.CategoricalDtype) and levels > ONE_HOT_MAX_LEVELS:
        raise InvalidInput(
            "data_path",
            f"column {column!r} is free text ({levels} distinct values); "
            "leave it out with feature_columns",
        )
    return None


def _as_float32(values: pd.Series) -> NDArray[np.float32]:
    numbers = pd.to_numeric(
        values.astype(object) if values.dtype.kind == "O" else values, errors="coerce"
    )
    return _float64(numbers).astype(np.float32)


def _float64(values: pd.Series) -> NDArray[np.float64]:
    """float64 with NaN for missing (also for pandas' nullable dtypes)."""
    return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _finite_labels(labels: pd.Series, target: str) -> tuple[pd.Series, list[str]]:
    """The target with infinite values as missing, and a note saying how many."""
    if labels.dtype.kind == "f":
        infinite = np.isinf(labels.to_numpy())
    elif labels.dtype.kind == "O":
        infinite = np.isinf(pd.to_numeric(labels, errors="coerce").to_numpy(dtype=np.float64))
    else:
        return labels, []
    count = int(infinite.sum())
    if not count:
        return labels, []
    note = f"target {target!r}: {count} infinite values treated as missing (rows dropped)"
    return labels.mask(infinite), [note]


def _refuse_small_classes(
    target: str, codes: NDArray[Any], classes: list[Any], test_size: float, *, numeric: bool
) -> None:
    """Every class needs rows for the held-out split plus ``MIN_TRAIN_ROWS_PER_CLASS``."""
    problem = _class_problem(codes, classes, test_size)
    if problem is None:
        return
    field, text = problem
    if field == "target":
        hint = " (or task_type='regression' if the values are quantities)" if numeric else ""
        raise InvalidInput(
            "target",
            f"{len(classes)} classes, and {text} ({MIN_TRAIN_ROWS_PER_CLASS} for training, "
            f"where autofeat cross-validates over 5 folds){hint}",
        )
    raise InvalidInput("test_size", f"{text}; raise it so every class is scored")


def _class_problem(
    codes: NDArray[Any], classes: list[Any], test_size: float
) -> tuple[str, str] | None:
    """``(field, problem)`` when a class is too small for the held-out split plus training,
    or the held-out rows are fewer than the classes; None when the classes can be trained."""
    counts = np.bincount(codes)
    needed = math.ceil(MIN_TRAIN_ROWS_PER_CLASS / (1 - test_size)) + 1
    smallest = int(counts.argmin())
    if counts[smallest] < needed:
        return "target", (
            f"class {_plain(classes[smallest])!r} has {counts[smallest]} rows; with test_size "
            f"{test_size} each class needs at least {needed}"
        )
    test_rows = math.ceil(test_size * len(codes))
    if test_rows < len(classes):
        return "test_size", (
            f"{test_size} holds out {test_rows} rows, fewer than the {len(classes)} classes"
        )
    return None


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
