"""What an AutoML job is asked to do (``AutoMLOptions``) and what it reports (``AutoMLResult``)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.errors import InvalidInput

TaskType = Literal["auto", "regression", "classification"]
Mode = Literal["normal", "lightweight"]

#: held-out share bounds: below 5% the metric is noise, above half the model starves
TEST_SIZE_RANGE = (0.05, 0.5)
#: CV folds for model selection; 2 is the least that compares, 10 the most worth the time
CV_FOLDS_RANGE = (2, 10)
#: artifact names become directory names under the output root
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_JOB_FIELDS = (
    "target",
    "task_type",
    "feature_columns",
    "test_size",
    "cv_folds",
    "time_budget_s",
    "memory_budget_mb",
    "random_state",
    "artifact_name",
)


@dataclass(frozen=True)
class AutoMLOptions:
    """One AutoML request, validated; ``None`` budgets fall back to the worker's settings."""

    target: str
    task_type: TaskType = "auto"
    feature_columns: tuple[str, ...] | None = None
    test_size: float = 0.2
    cv_folds: int = 3
    time_budget_s: float | None = None
    memory_budget_mb: int | None = None
    random_state: int = 0
    artifact_name: str | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> AutoMLOptions:
        """Parse a job's JSON kwargs (``data_path`` excluded); every problem is an InvalidInput."""
        unknown = sorted(set(kwargs) - set(_JOB_FIELDS))
        if unknown:
            raise InvalidInput(unknown[0], f"unknown option; accepted: {', '.join(_JOB_FIELDS)}")
        options = cls(
            target=_text("target", kwargs.get("target")),
            task_type=_task_type(kwargs.get("task_type", "auto")),
            feature_columns=_columns(kwargs.get("feature_columns")),
            test_size=_number("test_size", kwargs.get("test_size", 0.2), *TEST_SIZE_RANGE),
            cv_folds=int(_number("cv_folds", kwargs.get("cv_folds", 3), *CV_FOLDS_RANGE)),
            time_budget_s=_optional_number("time_budget_s", kwargs.get("time_budget_s"), 1.0),
            memory_budget_mb=_optional_int("memory_budget_mb", kwargs.get("memory_budget_mb"), 64),
            random_state=int(_number("random_state", kwargs.get("random_state", 0), 0, 2**31)),
            artifact_name=_artifact_name(kwargs.get("artifact_name")),
        )
        if options.feature_columns and options.target in options.feature_columns:
            raise InvalidInput("feature_columns", f"includes the target {options.target!r}")
        return options


@dataclass
class MemoryReport:
    """Memory figures of one job: input frame before/after optimisation, plan and measured peak."""

    budget_mb: int
    input_bytes_before: int
    input_bytes_after: int
    rows_read: int
    rows_used: int
    baseline_rss_mb: float
    estimated_peak_mb: float
    peak_rss_mb: float
    #: highest RSS sampled in each phase (load, prepare, feature_engineering_*, ...)
    phase_peak_rss_mb: dict[str, float]


@dataclass
class AutoMLResult:
    """What a finished job reports; ``as_dict`` is the JSON a task returns."""

    task_type: Literal["regression", "classification"]
    target: str
    metrics: dict[str, float]
    chosen_model: dict[str, Any]
    leaderboard: list[dict[str, Any]]
    features: dict[str, Any]
    memory: MemoryReport
    phase_seconds: dict[str, float]
    plan: dict[str, Any]
    mode: Mode
    mode_reason: str
    model_path: str
    classes: list[Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(name, "must be a non-empty string")
    return value


def _task_type(value: object) -> TaskType:
    if value == "auto" or value == "regression" or value == "classification":
        return value
    raise InvalidInput(
        "task_type", f"must be 'auto', 'regression' or 'classification', not {value!r}"
    )


def _columns(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise InvalidInput("feature_columns", "must be a non-empty list of column names")
    if len(set(value)) != len(value):
        raise InvalidInput("feature_columns", "lists a column twice")
    return tuple(value)


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(name, f"must be a number, not {value!r}")
    if not low <= value <= high:
        raise InvalidInput(name, f"must be between {low} and {high}, not {value}")
    return float(value)


def _optional_number(name: str, value: object, low: float) -> float | None:
    return None if value is None else _number(name, value, low, math.inf)


def _optional_int(name: str, value: object, low: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, f"must be an integer, not {value!r}")
    return int(_number(name, value, low, 2**40))


def _artifact_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ARTIFACT_NAME.match(value):
        raise InvalidInput(
            "artifact_name", "must be 1-128 of [A-Za-z0-9._-], not starting with '.'"
        )
    return value
