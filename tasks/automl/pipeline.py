"""``run_automl``: load, plan, engineer features, search models, evaluate, save. No Celery.

Memory is handled in three layers: the loader shrinks dtypes and samples rows to the budget,
the planner sizes autofeat and the models so their estimated peak fits the budget, and a
``MemoryError`` during fitting (real, e.g. from an RLIMIT_AS cap) switches to the lightweight
plan once. If even that does not fit, the job fails with ``InsufficientMemory``.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from config import Settings, get_settings
from tasks.automl.artifact import Artifact, load_artifact, save_artifact
from tasks.automl.features import EngineeredFeatures, engineer_features
from tasks.automl.loading import LoadedTable, load_table, probe_table
from tasks.automl.monitor import PeakRSS, address_space_cap
from tasks.automl.options import AutoMLOptions, AutoMLResult, MemoryReport, Mode
from tasks.automl.planner import Plan, fits, load_rows, plan_job
from tasks.automl.prepare import Encoder, check_columns, fit_encoder, resolve_target
from tasks.automl.search import (
    PREDICT_CHUNK_ROWS,
    SearchOutcome,
    held_out_metrics,
    predict_in_chunks,
    search_models,
)
from worker.errors import InsufficientMemory
from worker.paths import confined_path

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


@dataclass
class Fitted:
    """One successful attempt: its plan, features and chosen model."""

    plan: Plan
    features: EngineeredFeatures
    search: SearchOutcome
    #: columns the model sees: originals plus engineered
    feature_count: int


class Phases:
    """Wall time per named phase; tells the RSS sampler which phase its samples belong to."""

    def __init__(self, rss: PeakRSS) -> None:
        self.seconds: dict[str, float] = {}
        self.rss = rss

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        self.rss.sample()  # the previous phase's last reading
        self.rss.phase = name
        try:
            yield
        finally:
            self.rss.sample()
            elapsed = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 3)


def run_automl(
    data_path: str,
    options: AutoMLOptions,
    *,
    settings: Settings | None = None,
    lightweight_reason: str = "",
) -> AutoMLResult:
    """Train and evaluate on ``data_path`` (inside the input root); save the model.

    Args:
        data_path: CSV or Parquet file, relative to or inside ``settings.input_root``.
        options: the validated request.
        settings: worker settings (paths, budget defaults, n_jobs, address-space cap).
        lightweight_reason: start in lightweight mode for this reason (the memory guard's).
    """
    settings = settings or get_settings()
    budget = options.memory_budget_mb or settings.automl_memory_budget_mb
    path = confined_path("data_path", data_path, settings.input_root)
    with PeakRSS() as rss, address_space_cap(settings.automl_address_space_headroom_mb):
        phases = Phases(rss)
        try:
            with phases("load"):
                table = _load(path, options, budget, rss.current_mb())
            with phases("prepare"):
                data = _prepare(table.frame, options)
                table.frame = pd.DataFrame()  # the encoded copies are all we need now
        except MemoryError as exc:
            raise InsufficientMemory(f"loading {path.name} ran out of memory: {exc}") from None
        fitted, mode, reason = _fit_with_fallback(
            data, options, settings, budget, rss, phases, lightweight_reason
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
            model_path = save_artifact(artifact, settings.output_root, name)
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
        model_path=str(model_path),
        classes=data.classes,
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
    artifact = load_artifact(model_path, settings.output_root)
    path = confined_path("data_path", data_path, settings.input_root)
    probe = probe_table(path)
    check_columns(probe.columns, artifact.input_columns[0], artifact.input_columns)
    table = load_table(path, artifact.input_columns)
    return artifact.predict(table.frame, chunk_rows)


def _load(path: Path, options: AutoMLOptions, budget: float, rss_mb: float) -> LoadedTable:
    probe = probe_table(path)
    columns = check_columns(probe.columns, options.target, options.feature_columns)
    wanted = [*columns, options.target]
    per_row = probe.bytes_per_row_after * len(wanted) / len(probe.columns)
    return load_table(
        path,
        wanted,
        max_rows=load_rows(per_row, budget, rss_mb),
        estimated_rows=probe.estimated_rows,
        keep_dtype=[options.target],
        seed=options.random_state,
    )


def _prepare(frame: pd.DataFrame, options: AutoMLOptions) -> Prepared:
    features, target, task_type, classes = resolve_target(frame, options.target, options.task_type)
    stratify = None
    if classes is not None and np.bincount(target).min() >= 2:
        stratify = target
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=options.test_size,
        random_state=options.random_state,
        stratify=stratify,
    )
    encoder = fit_encoder(x_train)
    return Prepared(
        encoder.transform(x_train),
        y_train,
        encoder.transform(x_test),
        y_test,
        task_type,
        classes,
        encoder,
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
    )


def _fit_with_fallback(
    data: Prepared,
    options: AutoMLOptions,
    settings: Settings,
    budget: float,
    rss: PeakRSS,
    phases: Phases,
    lightweight_reason: str,
) -> tuple[Fitted, Mode, str]:
    """Fit the normal plan, or the lightweight one when normal does not fit or runs out."""
    reason = lightweight_reason
    if not reason:
        normal = _plan(data, "normal", budget, rss.current_mb(), settings.automl_n_jobs)
        if fits(normal, budget):
            fitted, reason = _attempt(data, normal, options, phases)
            if fitted is not None:
                return fitted, "normal", ""
            gc.collect()
        else:
            reason = f"normal plan needs ~{normal.estimated_peak_mb:.0f} MB > budget {budget} MB"
    light = _plan(data, "lightweight", budget, rss.current_mb(), 1)
    if not fits(light, budget):
        raise InsufficientMemory(
            f"even the lightweight plan needs ~{light.estimated_peak_mb:.0f} MB, over the "
            f"{budget} MB budget ({reason})"
        )
    log.warning("automl switching to lightweight mode: %s", reason)
    fitted, error = _attempt(data, light, options, phases)
    if fitted is None:
        raise InsufficientMemory(f"lightweight plan ran out of memory too: {error} ({reason})")
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
            )
    except MemoryError as exc:
        message = f"MemoryError in the {plan.mode} plan: {exc}".strip()
        log.warning("automl %s", message)
        return None, message
    return Fitted(plan, features, search, int(x_train.shape[1])), ""
