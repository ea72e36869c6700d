"""The saved model: everything ``predict`` needs, written with joblib under the output root.

joblib files are pickles, and loading a pickle runs code, so ``load_artifact`` only opens
files inside the configured output root, which only workers write, and reads them through
``open_confined``: a model file swapped for a symlink after the check is refused, not followed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from tasks.automl.features import EngineeredFeatures
from tasks.automl.prepare import Encoder
from tasks.automl.search import PREDICT_CHUNK_ROWS, predict_in_chunks
from worker.errors import InvalidInput, UnreadableInput
from worker.paths import confined_path, open_confined

#: bumped when the saved layout changes; older files are refused with a clear error
ARTIFACT_VERSION = 1
ARTIFACT_FILE = "model.joblib"


@dataclass
class Artifact:
    """Encoder, engineered features and estimator of one finished job."""

    task_type: str
    target: str
    encoder: Encoder
    features: EngineeredFeatures
    estimator: Any
    classes: list[Any] | None
    version: int = ARTIFACT_VERSION

    @property
    def input_columns(self) -> list[str]:
        return list(self.encoder.columns)

    def predict(self, frame: pd.DataFrame, chunk_rows: int = PREDICT_CHUNK_ROWS) -> list[Any]:
        """Predictions for ``frame`` (which must hold the training's feature columns),
        engineered and predicted ``chunk_rows`` rows at a time."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise InvalidInput(
                "data_path", f"columns {missing} the model was trained on are missing"
            )
        encoded = self.encoder.transform(frame[self.input_columns])
        predicted = predict_in_chunks(self.estimator, self.features.transform, encoded, chunk_rows)
        if self.classes is None:
            return [float(v) for v in predicted]
        return [self.classes[int(i)] for i in predicted]


def save_artifact(artifact: Artifact, output_root: Path, name: str) -> Path:
    """Write atomically to ``output_root/automl/<name>/model.joblib`` (a rerun replaces it)."""
    directory = output_root / "automl" / name
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ARTIFACT_FILE
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".model-", suffix=".tmp")
    os.close(handle)
    try:
        joblib.dump(artifact, temporary, compress=3)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def load_artifact(raw_path: object, output_root: Path) -> Artifact:
    """Load a model saved by ``save_artifact``; refuses paths outside ``output_root``."""
    path = confined_path("model_path", raw_path, output_root)
    try:
        with open_confined("model_path", path, output_root) as handle:
            artifact = joblib.load(handle)
    except InvalidInput:
        raise
    except Exception as exc:  # any unpickling failure means the file is not ours
        raise UnreadableInput("model_path", f"{path.name} is not an AutoML model: {exc}") from None
    if not isinstance(artifact, Artifact) or artifact.version != ARTIFACT_VERSION:
        raise UnreadableInput("model_path", f"{path.name} is not a current AutoML model")
    return artifact
