"""AutoML jobs: autofeat feature engineering plus a small scikit-learn model search.

``run_automl`` and ``predict`` are imported on first use, so reading the family's spec
(``tasks.automl.family``, which every client and worker does) imports no scikit-learn.
"""

from typing import Any

from tasks.automl.options import AutoMLOptions, AutoMLResult

__all__ = ["AutoMLOptions", "AutoMLResult", "predict", "run_automl"]


def __getattr__(name: str) -> Any:
    if name in ("predict", "run_automl"):
        from tasks.automl import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
