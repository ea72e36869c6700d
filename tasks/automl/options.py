"""What an AutoML job is asked to do (``AutoMLOptions``) and what it reports (``AutoMLResult``).

``AutoMLRequest`` and ``AutoMLPredictRequest`` are the kwargs of ``tasks.automl`` and
``tasks.automl_predict`` as pydantic models.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import Field, Strict, field_validator, model_validator

from worker.errors import InvalidInput
from worker.modes import Mode as Mode  # re-export: pipeline and planner import it from here
from worker.validation import RequestModel

TaskType = Literal["auto", "regression", "classification"]

#: held-out share bounds: below 5% the metric is noise, above half the model starves
TEST_SIZE_RANGE = (0.05, 0.5)
#: CV folds for model selection; 2 is the least that compares, 10 the most worth the time
CV_FOLDS_RANGE = (2, 10)
#: artifact names become directory names under the output root
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> AutoMLOptions:
        """Parse a job's JSON kwargs (``data_path`` excluded); every problem is an InvalidInput."""
        return AutoMLOptionsRequest.parse(kwargs).options


@dataclass
class MemoryReport:
    """Memory figures of one job: input frame before/after optimisation, plan and measured peak.

    The budget is the job's own growth: the plan must stay under ``baseline_rss_mb`` (the
    RSS when the job started) plus ``budget_mb``, whatever earlier jobs left in the process.
    """

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
    #: the RSS the plan had to stay under: ``baseline_rss_mb + budget_mb``
    rss_limit_mb: float
    #: ``peak_rss_mb - baseline_rss_mb``: what this job added, to compare with ``budget_mb``
    peak_growth_mb: float


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
    #: sha256 of the saved artifact, checked again whenever it is loaded
    model_sha256: str = ""
    classes: list[Any] | None = None
    #: what the data made the job do without failing (infinite values treated as missing)
    warnings: list[str] = field(default_factory=list)
    #: why ``task_type``: "requested", or what auto-detection weighed ("auto: ...")
    task_type_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULTS = AutoMLOptions(target="")


class AutoMLOptionsRequest(RequestModel):
    """The kwargs of ``tasks.automl`` less ``data_path``: the ``AutoMLOptions`` fields."""

    target: str
    task_type: TaskType = _DEFAULTS.task_type
    feature_columns: Annotated[tuple[str, ...], Strict(False), Field(min_length=1)] | None = None
    test_size: float = Field(
        _DEFAULTS.test_size, ge=TEST_SIZE_RANGE[0], le=TEST_SIZE_RANGE[1], allow_inf_nan=False
    )
    cv_folds: int = Field(_DEFAULTS.cv_folds, ge=CV_FOLDS_RANGE[0], le=CV_FOLDS_RANGE[1])
    time_budget_s: float | None = Field(None, ge=1.0, allow_inf_nan=False)
    memory_budget_mb: int | None = Field(None, ge=64, le=2**40)
    random_state: int = Field(_DEFAULTS.random_state, ge=0, le=2**31)
    artifact_name: str | None = None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value

    @field_validator("feature_columns")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a column twice")
        return value

    @field_validator("artifact_name")
    @classmethod
    def _artifact_name(cls, value: str | None) -> str | None:
        if value is not None and not _ARTIFACT_NAME.match(value):
            raise ValueError("must be 1-128 of [A-Za-z0-9._-], not starting with '.'")
        return value

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> Self:
        if self.feature_columns and self.target in self.feature_columns:
            raise InvalidInput("feature_columns", f"includes the target {self.target!r}")
        return self

    @property
    def options(self) -> AutoMLOptions:
        """The validated fields as the dataclass the pipeline takes."""
        return AutoMLOptions(**self.model_dump(include=set(AutoMLOptionsRequest.model_fields)))


class AutoMLRequest(AutoMLOptionsRequest):
    """The kwargs of ``tasks.automl``: ``data_path`` (under the input root or an input URL)
    and the options."""

    data_path: str


class AutoMLPredictRequest(RequestModel):
    """The kwargs of ``tasks.automl_predict``: a saved model and the table to predict."""

    model_path: str
    data_path: str
