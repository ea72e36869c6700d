"""The naive AutoML baseline: plain ``pd.read_csv`` and autofeat with its defaults, no planning.

Run in a subprocess by ``bench.automl`` (``python -m bench.naive_automl CSV TARGET``), which
samples its peak RSS and kills it past a timeout or an RSS ceiling. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
from autofeat import AutoFeatRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split


def main(csv_path: str, target: str) -> None:
    started = time.perf_counter()
    frame = pd.read_csv(csv_path)
    y = frame.pop(target).to_numpy()
    x_train, x_test, y_train, y_test = train_test_split(frame, y, test_size=0.2, random_state=0)
    model = AutoFeatRegressor(verbose=0)  # defaults: feateng_steps=2, featsel_runs=5
    features_train = model.fit_transform(x_train, y_train)
    features_test = model.transform(x_test)
    score = LinearRegression().fit(features_train, y_train).score(features_test, y_test)
    report = {
        "seconds": time.perf_counter() - started,
        "r2": float(score),
        "features": int(features_train.shape[1]),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
