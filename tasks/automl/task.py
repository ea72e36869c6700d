"""Handlers of the AutoML tasks: ``tasks.automl`` trains, ``tasks.automl_predict`` reuses a
model. Plain tasks: one job per message, run by the runtime like a batch of one.

Lightweight mode: training uses the planner's lightweight plan (fewer autofeat steps and
rows, one small model family; the pipeline also switches to it on its own when the normal
plan does not fit the budget or raises ``MemoryError``); prediction engineers and predicts
``LIGHT_PREDICT_CHUNK_ROWS`` rows at a time instead of ``PREDICT_CHUNK_ROWS``.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import autofeat
import sklearn

from config import Settings
from tasks.automl.artifact import model_url
from tasks.automl.loading import CSV_SUFFIXES
from tasks.automl.options import _ARTIFACT_NAME, AutoMLPredictRequest, AutoMLRequest
from tasks.automl.pipeline import predict, run_automl
from worker.errors import InvalidInput
from worker.handler import Outcome, Produced, RunContext, RunMode
from worker.registry import Loaded, registry
from worker.storage import confine_input, is_url, output_url, upload_file

#: registry name; AutoML trains per job, so the "model" is the library stack, warmed at start
REGISTRY_NAME = "automl"
BACKEND = "autofeat+sklearn"
#: rows engineered and predicted at once in lightweight mode (a tenth of normal mode's)
LIGHT_PREDICT_CHUNK_ROWS = 2_000


def load_stack(settings: Settings) -> Loaded:
    """Nothing to load but the libraries (imported with this module); name their versions."""
    versions = {"autofeat": autofeat.__version__, "scikit-learn": sklearn.__version__}
    model_id = "+".join(f"{name}-{version}" for name, version in versions.items())
    return Loaded(model=None, model_id=model_id, backend=BACKEND, details=versions)


class TrainAutoML:
    """Handler of ``tasks.automl``: train on ``data_path`` (kwargs: ``AutoMLRequest``)."""

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> AutoMLRequest:
        request = AutoMLRequest.parse(kwargs)
        _check_url(request.data_path, settings)
        return request

    def run(
        self, items: Sequence[AutoMLRequest], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        registry.get(REGISTRY_NAME)  # a worker on a non-family queue has not preloaded it
        out: list[Outcome] = []
        for index, (item, job_id) in enumerate(zip(items, context.job_ids, strict=True)):
            options = item.options
            if options.artifact_name is None:  # a redelivered job overwrites its own model
                if not _ARTIFACT_NAME.match(job_id):
                    raise InvalidInput("artifact_name", f"job id {job_id!r} is not usable as one")
                options = dataclasses.replace(options, artifact_name=job_id)
            reason = mode.reason if mode.lightweight else ""
            result = run_automl(
                item.data_path,
                options,
                lightweight_reason=reason,
                progress=functools.partial(_report, context, index),
            )
            ran = RunMode(result.mode, result.mode_reason)
            out.append(Produced(result.as_dict(), REGISTRY_NAME, ran))
        return out


class PredictAutoML:
    """Handler of ``tasks.automl_predict``: kwargs ``model_path`` and ``data_path``."""

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> AutoMLPredictRequest:
        request = AutoMLPredictRequest.parse(kwargs)
        if is_url(request.model_path):
            model_url(request.model_path, settings.output_root)
        _check_url(request.data_path, settings)
        return request

    def run(
        self, items: Sequence[AutoMLPredictRequest], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        registry.get(REGISTRY_NAME)
        settings = context.settings
        chunk = LIGHT_PREDICT_CHUNK_ROWS if mode.lightweight else None
        out: list[Outcome] = []
        for item, job_id in zip(items, context.job_ids, strict=True):
            extra = {"chunk_rows": chunk} if chunk else {}
            predictions = predict(item.model_path, item.data_path, settings=settings, **extra)
            payload: dict[str, Any] = {"rows": len(predictions), "model_path": item.model_path}
            if len(predictions) <= settings.automl_max_inline_predictions:
                payload["predictions"] = predictions
            else:
                payload["predictions_path"] = _write_predictions(predictions, settings, job_id)
            out.append(Produced(payload, REGISTRY_NAME, mode))
        return out


def _report(context: RunContext, index: int, fraction: float, phase: str) -> None:
    context.progress(index, fraction, phase)


def _check_url(raw: str, settings: Settings) -> None:
    """A URL ``data_path`` outside ``MLWORKER_INPUT_URLS`` fails here, before the job runs
    (local paths are confined by the pipeline, which callers also use without a task)."""
    if is_url(raw):
        confine_input("data_path", raw, settings)


def _write_predictions(predictions: list[object], settings: Settings, job_id: str) -> str:
    """Large outputs go to a file, not into Redis (messages carry paths, not blobs): a CSV
    under the output root, uploaded whole when that root is ``s3://``."""
    import pandas as pd

    frame = pd.DataFrame({"prediction": predictions})
    name = f"{Path(job_id).name}{CSV_SUFFIXES[0]}"
    root = output_url(settings)
    if root is not None:
        url = root.child("automl", "predictions", name)
        with tempfile.TemporaryDirectory(prefix="mlworker-predictions-") as scratch:
            local = Path(scratch) / name
            frame.to_csv(local, index=False)
            upload_file("predictions_path", local, url)
        return str(url)
    assert isinstance(settings.output_root, Path)
    directory = settings.output_root / "automl" / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    frame.to_csv(path, index=False)
    return str(path)
