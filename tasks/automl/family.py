"""The AutoML family's declaration: queue ``automl``, plain tasks ``tasks.automl`` and
``tasks.automl_predict``."""

from __future__ import annotations

from tasks.automl.options import AutoMLPredictRequest, AutoMLRequest
from worker.family import FamilySpec, ModelSpec, TaskSpec

FAMILY = FamilySpec(
    name="automl",
    queue="automl",
    tasks=(
        TaskSpec(
            name="tasks.automl",
            handler="tasks.automl.task:TrainAutoML",
            request=AutoMLRequest,
            time_limit_s=lambda s: s.automl_time_limit_s,
        ),
        TaskSpec(
            name="tasks.automl_predict",
            handler="tasks.automl.task:PredictAutoML",
            request=AutoMLPredictRequest,
            time_limit_s=lambda s: s.automl_time_limit_s,
        ),
    ),
    # training fits per job: the "model" is the library stack, imported and named at start
    models=(ModelSpec("automl", "tasks.automl.task:load_stack"),),
    lightweight="training: the planner's lightweight plan (fewer autofeat steps and rows, "
    "one small model family); prediction: 2,000 rows at a time instead of 20,000",
    client={
        "automl": "tasks.automl.client:automl",
        "automl_predict": "tasks.automl.client:automl_predict",
    },
    cli="tasks.automl.cli:install",
    demo="tasks.automl.cli:demo",
)
