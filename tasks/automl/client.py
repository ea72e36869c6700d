"""``MLClient.automl`` and ``MLClient.automl_predict``: the AutoML family's client helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.automl.options import AutoMLPredictRequest, AutoMLRequest

if TYPE_CHECKING:
    from worker.client import Job, MLClient


def automl(
    client: MLClient,
    data_path: str,
    target: str,
    *,
    job_id: str | None = None,
    priority: int | None = None,
    **options: Any,
) -> Job:
    """Train on a CSV/Parquet file under the input root, predicting column ``target``."""
    request = AutoMLRequest.parse({"data_path": data_path, "target": target, **options})
    return client.send(request, job_id=job_id, priority=priority)


def automl_predict(
    client: MLClient,
    model_path: str,
    data_path: str,
    *,
    job_id: str | None = None,
    priority: int | None = None,
) -> Job:
    """Predict the rows of ``data_path`` with the model a training job saved."""
    request = AutoMLPredictRequest.parse({"model_path": model_path, "data_path": data_path})
    return client.send(request, job_id=job_id, priority=priority)
