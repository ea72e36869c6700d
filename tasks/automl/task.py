"""Celery adapters for AutoML: ``tasks.automl`` trains, ``tasks.automl_predict`` reuses a model.

Both parse JSON kwargs into typed options, ask the memory guard whether to run (and how), call
the Celery-free pipeline and return JSON stamped by ``envelope``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import autofeat
import sklearn

from config import Settings, get_settings
from tasks.automl.loading import CSV_SUFFIXES
from tasks.automl.options import AutoMLOptions
from tasks.automl.pipeline import predict, run_automl
from worker.app import app
from worker.errors import InsufficientMemory, InvalidInput
from worker.jobs import MLTask, envelope
from worker.memory import process_guard
from worker.registry import Loaded, registry

#: registry name; AutoML trains per job, so the "model" is the library stack, warmed at start
REGISTRY_NAME = "automl"
BACKEND = "autofeat+sklearn"


def _load_stack(settings: Settings) -> Loaded:
    """Nothing to load but the libraries (imported with this module); name their versions."""
    versions = {"autofeat": autofeat.__version__, "scikit-learn": sklearn.__version__}
    model_id = "+".join(f"{name}-{version}" for name, version in versions.items())
    return Loaded(model=None, model_id=model_id, backend=BACKEND, details=versions)


registry.register(REGISTRY_NAME, "automl", _load_stack)


def _lightweight_reason() -> str:
    """The guard's verdict before a job: refuse raises, lightweight returns why."""
    check = process_guard().check()
    if check.verdict == "refuse":
        raise InsufficientMemory(f"not starting an AutoML job: {check.reason}")
    return check.reason if check.verdict == "lightweight" else ""


@app.task(
    name="tasks.automl",
    base=MLTask,
    bind=True,
)
def automl(self: MLTask, **kwargs: Any) -> dict[str, Any]:
    """Train on ``data_path``: kwargs as ``AutoMLOptions`` plus ``data_path``."""
    started = time.perf_counter()
    registry.get(REGISTRY_NAME)  # a worker on a non-family queue has not preloaded it
    data_path = kwargs.pop("data_path", None)
    kwargs.setdefault("artifact_name", self.request.id)  # a redelivered job overwrites its model
    options = AutoMLOptions.from_kwargs(kwargs)
    reason = _lightweight_reason()
    try:
        result = run_automl(data_path, options, lightweight_reason=reason)  # type: ignore[arg-type]
    finally:
        process_guard().job_done()
    return envelope(
        result.as_dict(),
        model_name=REGISTRY_NAME,
        mode=result.mode,
        mode_reason=result.mode_reason,
        started=started,
    )


@app.task(
    name="tasks.automl_predict",
    base=MLTask,
    bind=True,
)
def automl_predict(self: MLTask, **kwargs: Any) -> dict[str, Any]:
    """Predict with a saved model: kwargs ``model_path`` and ``data_path``."""
    started = time.perf_counter()
    unknown = sorted(set(kwargs) - {"model_path", "data_path"})
    if unknown:
        raise InvalidInput(unknown[0], "unknown option; accepted: model_path, data_path")
    registry.get(REGISTRY_NAME)
    _lightweight_reason()
    settings = get_settings()
    predictions = predict(kwargs.get("model_path"), kwargs.get("data_path"))  # type: ignore[arg-type]
    payload: dict[str, Any] = {"rows": len(predictions), "model_path": kwargs["model_path"]}
    if len(predictions) <= settings.automl_max_inline_predictions:
        payload["predictions"] = predictions
    else:
        payload["predictions_path"] = str(
            _write_predictions(predictions, settings, self.request.id)
        )
    return envelope(payload, model_name=REGISTRY_NAME, mode="normal", started=started)


def _write_predictions(predictions: list[object], settings: Settings, job_id: str) -> Path:
    """Large outputs go to a file, not into Redis (messages carry paths, not blobs)."""
    import pandas as pd

    directory = settings.output_root / "automl" / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job_id}{CSV_SUFFIXES[0]}"
    pd.DataFrame({"prediction": predictions}).to_csv(path, index=False)
    return path
