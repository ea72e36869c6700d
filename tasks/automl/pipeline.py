"""``run_automl``: load, plan, engineer features, search models, evaluate, save. No Celery.

Memory is handled in three layers: the loader shrinks dtypes and samples rows to the budget,
the planner sizes autofeat and the models so their estimated peak fits the budget, and a
``MemoryError`` during fitting (real, e.g. from an RLIMIT_AS cap) switches to the lightweight
plan once. If even that does not fit, the job fails with ``InsufficientMemory``. The budget
is the job's own growth: RSS at the job's start plus ``memory_budget_mb`` is the limit, so what
earlier jobs left in a worker child does not eat into it.

The table is opened once (``source.open_table``, no symlink followed) and the header, probe
and chunks are all read from that descriptor. Every refusal is a contract error naming its
field; a ``ValueError`` that autofeat or scikit-learn still raise on some unforeseen table
becomes ``InvalidInput("data_path")`` (logged with its traceback).
"""

from __future__ import annotations

import functools
import gc
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from config import Settings, get_settings
from tasks.automl.artifact import Artifact, load_artifact, write_artifact
from tasks.automl.features import EngineeredFeatures, engineer_features
from tasks.automl.loading import LoadedTable, load_table, probe_table
from tasks.automl.monitor import PeakRSS, address_space_cap
from tasks.automl.options import AutoMLOptions, AutoMLResult, MemoryReport, Mode
from tasks.automl.planner import Plan, fits, load_rows, plan_job, shortfall
from tasks.automl.prepare import (
    Encoder,
    check_columns,
    fit_encoder,
    refuse_constant,
    resolve_target,
)
from tasks.automl.search import (
    PREDICT_CHUNK_ROWS,
    SearchOutcome,
    held_out_metrics,
    predict_in_chunks,
    search_models,
)
from tasks.automl.source import open_table, read_columns
from worker.errors import InsufficientMemory, InvalidInput
from worker.paths import confined_path
from worker.storage import Location, confine_input

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Encoded train/test matrices and what produced them."""

    x_train: pd.DataFrame
    y_train: NDArray[Any]
    x_test: pd.DataFrame
    y_test: NDArray[Any]
    task_type: str
    classes: list[object] | None
    encoder: Encoder
    task_type_reason: str
    notes: list[str]


@dataclass
class Fitted:
    """One successful attempt: its plan, features and chosen model."""

    plan: Plan
    features: EngineeredFeatures
    search: SearchOutcome
    #: columns the model sees: originals plus engineered
    feature_count: int


#: what a job reports as PROGRESS while a pipeline phase runs: (public phase, fraction done);
#: the fractions are where each phase starts, by its usual share of a job's wall time
PROGRESS_PHASES = {
    "load": ("loading", 0.0),
    "prepare": ("loading", 0.05),
    "feature_engineering": ("feature_engineering", 0.1),
    "transform": ("feature_engineering", 0.45),
    "model_search": ("model_search", 0.5),
    "evaluate": ("scoring", 0.9),
    "save": ("scoring", 0.95),
}

#: ``progress(fraction, phase)``, called as each phase starts and as model search moves on
ProgressCallback = Callable[[float, str], None]


class Phases:
    """Wall time per named phase; tells the RSS sampler which phase its samples belong to,
    and ``progress`` (if any) which public phase the job is in and how far it is.

    The fraction reported never goes back: a lightweight retry after a ``MemoryError``
    reports feature_engineering and model_search again, at the fraction already reached.
    """

    def __init__(self, rss: PeakRSS, progress: ProgressCallback | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.rss = rss
        self.progress = progress
        self.fraction = 0.0

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        public = _public_phase(name)
        if public is not None:
            self._report(PROGRESS_PHASES[public][1], PROGRESS_PHASES[public][0])
        self.rss.sample()  # the previous phase's last reading
        self.rss.phase = name
        try:
            yield
        finally:
            self.rss.sample()
            elapsed = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 3)

    def within(self, name: str, done: float) -> None:
        """``done`` (0..1) of phase ``name`` is behind us: report the fraction that far
        between its start and the next phase's."""
        public = _public_phase(name)
        if public is None:
            return
        phase, start = PROGRESS_PHASES[public]
        later = [f for _, f in PROGRESS_PHASES.values() if f > start]
        end = min(later) if later else 1.0
        self._report(start + (end - start) * min(max(done, 0.0), 1.0), phase)

    def _report(self, fraction: float, phase: str) -> None:
        self.fraction = max(self.fraction, fraction)
        if self.progress is not None:
            self.progress(self.fraction, phase)


def _public_phase(name: str) -> str | None:
    """The ``PROGRESS_PHASES`` key of a pipeline phase (``model_search_normal``: model_search)."""
    for key in (name, name.rsplit("_", 1)[0]):
        if key in PROGRESS_PHASES:
            return key
    return None


def run_automl(
    data_path: str,
    options: AutoMLOptions,
    *,
    settings: Settings | None = None,
    lightweight_reason: str = "",
    progress: ProgressCallback | None = None,
) -> AutoMLResult:
    """Train and evaluate on ``data_path`` (inside the input root or an input URL); save the
    model (locally or to the ``s3://`` output root).

    Args:
        data_path: CSV or Parquet file, relative to or inside ``settings.input_root``, or a
            URL under ``settings.input_urls``.
        options: the validated request.
        settings: worker settings (paths, budget defaults, n_jobs, address-space cap).
        lightweight_reason: start in lightweight mode for this reason (the memory guard's).
        progress: called ``(fraction, phase)`` as each phase starts: loading,
            feature_engineering, model_search, scoring.
    """
    settings = settings or get_settings()
    budget = options.memory_budget_mb or settings.automl_memory_budget_mb
    with PeakRSS() as rss, address_space_cap(settings.automl_address_space_headroom_mb):
        limit_mb = rss.baseline_mb + budget  # the job's own growth, not the child's history
        phases = Phases(rss, progress)
        try:
            with phases("load"):
                table = load_training_table(
                    confine_input("data_path", data_path, settings),
                    options,
                    settings.input_root,
                    limit_mb,
                    rss.current_mb,
                    max_url_bytes=settings.max_url_input_bytes,
                )
            with phases("prepare"):
                data = _prepare(table.frame, options)
                table.frame = pd.DataFrame()  # the encoded copies are all we need now
        except MemoryError as exc:
            message = f"data_path: loading {data_path} ran out of memory: {exc}"
            raise InsufficientMemory(message) from None
        fitted, mode, reason = _fit_with_fallback(
            data, options, settings, limit_mb, rss, phases, lightweight_reason
        )
        with phases("evaluate"):
            predicted = predict_in_chunks(
                fitted.search.estimator, fitted.features.transform, data.x_test
            )
            metrics = held_out_metrics(predicted, data.y_test, data.task_type)
        with phases("save"):
            artifact = Artifact(
                data.task_type,
                options.target,
                data.encoder,
                fitted.features,
                fitted.search.estimator,
                data.classes,
            )
            name = options.artifact_name or uuid.uuid4().hex
            saved = write_artifact(artifact, settings.output_root, name)
    memory = MemoryReport(
        budget_mb=budget,
        input_bytes_before=table.bytes_before,
        input_bytes_after=table.bytes_after,
        rows_read=table.rows_read,
        rows_used=len(data.y_train) + len(data.y_test),
        baseline_rss_mb=round(rss.baseline_mb, 1),
        estimated_peak_mb=fitted.plan.estimated_peak_mb,
        peak_rss_mb=round(rss.peak_mb, 1),
        phase_peak_rss_mb=dict(rss.phase_peaks_mb),
        rss_limit_mb=round(limit_mb, 1),
        peak_growth_mb=round(rss.peak_mb - rss.baseline_mb, 1),
    )
    return AutoMLResult(
        task_type="regression" if data.task_type == "regression" else "classification",
        target=options.target,
        metrics=metrics,
        chosen_model={
            "name": fitted.search.name,
            "estimator": type(fitted.search.estimator).__name__,
            "cv_score": fitted.search.cv_score,
            "scoring": fitted.search.scoring,
        },
        leaderboard=fitted.search.leaderboard,
        features={
            "engineered": fitted.features.formulas,
            "engineered_from": fitted.features.engineered_from,
            "inputs": data.encoder.output_names,
            "count": fitted.feature_count,
        },
        memory=memory,
        phase_seconds=phases.seconds,
        plan=fitted.plan.as_dict(),
        mode=mode,
        mode_reason=reason,
        model_path=saved.location,
        model_sha256=saved.sha256,
        classes=data.classes,
        warnings=data.notes,
        task_type_reason=data.task_type_reason,
    )


def predict(
    model_path: str,
    data_path: str,
    *,
    settings: Settings | None = None,
    chunk_rows: int = PREDICT_CHUNK_ROWS,
) -> list[object]:
    """Predictions of a saved model for the rows of ``data_path`` (both paths confined),
    ``chunk_rows`` rows at a time."""
    settings = settings or get_settings()
    limit = settings.max_url_input_bytes
    artifact = load_artifact(model_path, settings.output_root, limit)
    path = confine_input("data_path", data_path, settings)
    with open_table("data_path", path, settings.input_root, limit) as table:
        available = set(read_columns(table))
        missing = [c for c in artifact.input_columns if c not in available]
        if missing:
            raise InvalidInput(
                "data_path", f"columns {missing[:20]} the model was trained on are missing"
            )
        frame = load_table(table, artifact.input_columns).frame
    return artifact.predict(frame, chunk_rows)


def load_training_table(
    data_path: str | Location,
    options: AutoMLOptions,
    root: Path,
    limit_mb: float,
    rss_mb: Callable[[], float],
    *,
    max_url_bytes: int = 0,
) -> LoadedTable:
    """Open ``data_path`` once and read the target and feature columns from it, sampling rows
    so the frame takes its share of ``limit_mb`` (absolute RSS).

    A string is a local path, confined to ``root`` here; a ``confine_input`` result (a
    confined path or a checked URL, spooled within ``max_url_bytes``) is used as it is.
    """
    path = confined_path("data_path", data_path, root) if isinstance(data_path, str) else data_path
    with open_table("data_path", path, root, max_url_bytes) as table:
        columns = check_columns(read_columns(table), options.target, options.feature_columns)
        wanted = [*columns, options.target]
        probe = probe_table(table, wanted)
        return load_table(
            table,
            wanted,
            max_rows=load_rows(probe.bytes_per_row_after, limit_mb, rss_mb()),
            estimated_rows=probe.estimated_rows,
            keep_dtype=[options.target],
            seed=options.random_state,
        )


def prepare_split(
    data_path: str, options: AutoMLOptions, *, settings: Settings | None = None
) -> Prepared:
    """The encoded train/test rows a ``run_automl`` job on ``data_path`` with ``options``
    would train and score on: the same loading, task type, split and encoding (so baselines,
    e.g. ``bench.automl_quality``'s, can be scored on exactly its held-out rows)."""
    settings = settings or get_settings()
    budget = options.memory_budget_mb or settings.automl_memory_budget_mb
    rss = PeakRSS()  # not started: the baseline reading the row budget is sized from
    table = load_training_table(
        confine_input("data_path", data_path, settings),
        options,
        settings.input_root,
        rss.baseline_mb + budget,
        rss.current_mb,
        max_url_bytes=settings.max_url_input_bytes,
    )
    return _prepare(table.frame, options)


def _prepare(frame: pd.DataFrame, options: AutoMLOptions) -> Prepared:
    target = resolve_target(frame, options.target, options.task_type, test_size=options.test_size)
    x_train, x_test, y_train, y_test = train_test_split(
        target.features,
        target.values,
        test_size=options.test_size,
        random_state=options.random_state,
        stratify=target.values if target.classes is not None else None,
    )
    encoder = fit_encoder(x_train)
    encoded_train = encoder.transform(x_train)
    refuse_constant(encoded_train)
    return Prepared(
        encoded_train,
        y_train,
        encoder.transform(x_test),
        y_test,
        target.task_type,
        target.classes,
        encoder,
        target.reason,
        target.notes,
    )


def _plan(data: Prepared, mode: Mode, budget: float, rss_mb: float, n_jobs: int) -> Plan:
    return plan_job(
        mode=mode,
        task_type=data.task_type,
        rows=len(data.y_train),
        features=data.x_train.shape[1],
        budget_mb=budget,
        baseline_mb=rss_mb,
        n_jobs=n_jobs,
        classes=len(data.classes or ()),
    )


def _fit_with_fallback(
    data: Prepared,
    options: AutoMLOptions,
    settings: Settings,
    limit_mb: float,
    rss: PeakRSS,
    phases: Phases,
    lightweight_reason: str,
) -> tuple[Fitted, Mode, str]:
    """Fit the normal plan, or the lightweight one when normal does not fit or runs out.

    ``limit_mb`` is absolute RSS (the job's start plus its budget); messages speak of the
    budget, i.e. MB above the job's start.
    """
    reason = lightweight_reason
    if not reason:
        normal = _plan(data, "normal", limit_mb, rss.current_mb(), settings.automl_n_jobs)
        if fits(normal, limit_mb):
            fitted, reason = _attempt(data, normal, options, phases)
            if fitted is not None:
                return fitted, "normal", ""
            gc.collect()
        else:
            reason = shortfall(normal, limit_mb, rss.baseline_mb)
    light = _plan(data, "lightweight", limit_mb, rss.current_mb(), 1)
    if not fits(light, limit_mb):
        raise InsufficientMemory(
            f"memory_budget_mb: even {shortfall(light, limit_mb, rss.baseline_mb)} ({reason})"
        )
    log.warning("automl switching to lightweight mode: %s", reason)
    fitted, error = _attempt(data, light, options, phases)
    if fitted is None:
        raise InsufficientMemory(
            f"memory_budget_mb: the lightweight plan ran out of memory too: {error} ({reason})"
        )
    return fitted, "lightweight", reason


def _attempt(
    data: Prepared, plan: Plan, options: AutoMLOptions, phases: Phases
) -> tuple[Fitted | None, str]:
    """Feature engineering plus model search with ``plan``; ``(None, why)`` on MemoryError."""
    deadline = None
    if options.time_budget_s is not None:
        deadline = time.monotonic() + options.time_budget_s
    try:
        with phases(f"feature_engineering_{plan.mode}"):
            features = engineer_features(
                data.x_train, data.y_train, data.task_type, plan, options.random_state
            )
        with phases(f"transform_{plan.mode}"):
            rows = np.random.default_rng(options.random_state).permutation(len(data.y_train))
            rows = np.sort(rows[: plan.model_rows])
            x_train = features.transform(data.x_train.iloc[rows])
        with phases(f"model_search_{plan.mode}"):
            search = search_models(
                x_train,
                data.y_train[rows],
                data.task_type,
                plan,
                folds=options.cv_folds,
                seed=options.random_state,
                deadline=deadline,
                progress=functools.partial(phases.within, f"model_search_{plan.mode}"),
            )
    except MemoryError as exc:
        message = f"MemoryError in the {plan.mode} plan: {exc}".strip()
        log.warning("automl %s", message)
        return None, message
    except InvalidInput:
        raise
    except ValueError as exc:  # autofeat/sklearn refusing a table no check here foresaw
        phase = phases.rss.phase
        log.exception("automl %s refused the table", phase)
        raise InvalidInput("data_path", f"{phase} failed on this table: {exc}") from None
    return Fitted(plan, features, search, int(x_train.shape[1])), ""
