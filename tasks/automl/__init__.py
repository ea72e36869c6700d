"""AutoML jobs: autofeat feature engineering plus a small scikit-learn model search."""

from tasks.automl.options import AutoMLOptions, AutoMLResult
from tasks.automl.pipeline import predict, run_automl

__all__ = ["AutoMLOptions", "AutoMLResult", "predict", "run_automl"]
