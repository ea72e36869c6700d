"""AutoML jobs through a real ``mlworker worker --queues automl`` and a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from celery import Celery
from sklearn.datasets import load_diabetes, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split

from tests.support import WorkerProcess
from worker.errors import InvalidInput, PathOutsideRoot, UnreadableInput
from worker.test_hooks import MEMORY_ERROR_HOOK

#: a job on a bundled dataset takes ~10-20 s on 2 shared cores
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def automl_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker("automl")


@pytest.fixture(scope="module")
def tables(input_root: Path) -> dict[str, pd.DataFrame]:
    frames = {
        "diabetes": load_diabetes(as_frame=True).frame,
        "wine": load_wine(as_frame=True).frame,
    }
    for name, frame in frames.items():
        frame.to_csv(input_root / f"{name}.csv", index=False)
    return frames


def _run(app: Celery, name: str = "tasks.automl", queue: str | None = None, **kwargs: Any) -> Any:
    options = {"queue": queue} if queue else {}
    return app.send_task(name, kwargs=kwargs, **options).get(timeout=JOB_TIMEOUT_S)


@pytest.fixture(scope="module")
def diabetes_result(
    client_app: Celery, automl_worker: WorkerProcess, tables: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    return dict(_run(client_app, data_path="diabetes.csv", target="target"))


def test_regression_job_beats_linear_baseline(
    diabetes_result: dict[str, Any], tables: dict[str, pd.DataFrame]
) -> None:
    """Diabetes through the worker: held-out R2 at least plain least squares on the same split."""
    frame = tables["diabetes"]
    x_train, x_test, y_train, y_test = train_test_split(
        frame.drop(columns="target"), frame["target"], test_size=0.2, random_state=0
    )
    baseline = LinearRegression().fit(x_train, y_train).score(x_test, y_test)
    result = diabetes_result
    assert result["metrics"]["r2"] >= baseline
    assert result["mode"] == "normal" and result["backend"] == "autofeat+sklearn"
    assert result["model"]["name"] == "automl" and Path(result["model_path"]).is_file()
    assert "engineered" in result["features"] and result["memory"]["peak_rss_mb"] > 0


def test_classification_job_beats_linear_baseline(
    client_app: Celery, automl_worker: WorkerProcess, tables: dict[str, pd.DataFrame]
) -> None:
    """Wine through the worker: held-out accuracy at least a logistic regression's."""
    frame = tables["wine"]
    x_train, x_test, y_train, y_test = train_test_split(
        frame.drop(columns="target"),
        frame["target"],
        test_size=0.2,
        random_state=0,
        stratify=frame["target"],
    )
    baseline = LogisticRegression(max_iter=5000).fit(x_train, y_train).score(x_test, y_test)
    result = _run(client_app, data_path="wine.csv", target="target")
    assert result["task_type"] == "classification" and result["classes"] == [0, 1, 2]
    assert result["metrics"]["accuracy"] >= baseline


def test_predict_job_reuses_saved_model(
    client_app: Celery, diabetes_result: dict[str, Any], tables: dict[str, pd.DataFrame]
) -> None:
    """automl_predict loads the joblib artifact and returns one prediction per row."""
    result = _run(
        client_app,
        "tasks.automl_predict",
        model_path=diabetes_result["model_path"],
        data_path="diabetes.csv",
    )
    assert result["rows"] == len(tables["diabetes"]) == len(result["predictions"])


def test_memory_error_in_normal_plan_falls_back_to_lightweight(
    client_app: Celery, start_worker: Callable[..., WorkerProcess], input_root: Path
) -> None:
    """A real MemoryError (RLIMIT_AS cap in the child) switches the job to lightweight mode."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40_000, 8)) + 3, columns=[f"f{i}" for i in range(8)])
    frame["y"] = frame.f0 * frame.f1 + np.log(frame.f2.abs() + 1) + rng.normal(size=len(frame))
    frame.to_csv(input_root / "synthetic.csv", index=False)
    # measured on this table: the normal plan peaks ~380 MB above the RSS it starts from, the
    # lightweight one ~50 MB (numba compiles reserve more address space but survive a cap)
    start_worker("automl_capped", MLWORKER_AUTOML_ADDRESS_SPACE_HEADROOM_MB="220")
    result = _run(client_app, queue="automl_capped", data_path="synthetic.csv", target="y")
    assert result["mode"] == "lightweight"
    assert "MemoryError" in result["mode_reason"]
    assert result["metrics"]["r2"] > 0.5


@pytest.mark.parametrize("name", ["tasks.automl", "tasks.automl_predict"])
def test_memory_error_hook_retries_plain_tasks_lightweight(
    client_app: Celery,
    start_worker: Callable[..., WorkerProcess],
    tables: dict[str, pd.DataFrame],
    name: str,
) -> None:
    """A real MemoryError raised as a plain AutoML job starts normal runs it lightweight."""
    start_worker("automl_hooks", MLWORKER_TEST_HOOKS="1")
    trained = _run(client_app, queue="automl_hooks", data_path="diabetes.csv", target="target")
    kwargs: dict[str, Any] = {"data_path": "diabetes.csv", MEMORY_ERROR_HOOK: "normal"}
    if name == "tasks.automl":
        kwargs["target"] = "target"
    else:
        kwargs["model_path"] = trained["model_path"]
    result = _run(client_app, name, queue="automl_hooks", **kwargs)
    assert result["mode"] == "lightweight" and "MemoryError" in result["mode_reason"]


BAD_INPUTS: dict[str, tuple[str | None, dict[str, Any], type[Exception], str]] = {
    "missing file": (None, {"data_path": "nope.csv"}, InvalidInput, "does not exist"),
    "outside root": (None, {"data_path": "/etc/passwd"}, PathOutsideRoot, "outside"),
    "unknown target": ("a,b\n1,2\n", {"target": "price"}, InvalidInput, "'price' is not"),
    "empty file": ("", {}, UnreadableInput, "is empty"),
    "one class": ("a,target\n" + "".join(f"{i},x\n" for i in range(30)), {}, InvalidInput,
                  "one class"),
    "all nan": ("a,b,target\n" + "".join(f"{i},,{i % 2}\n" for i in range(30)), {},
                InvalidInput, "'b' is empty"),
    "junk": ("a,target\n" + "".join(f"{'n/a?' if i == 3 else i},{i}\n" for i in range(30)), {},
             InvalidInput, "non-numeric"),
}  # fmt: skip


def test_bad_inputs_fail_clearly_and_worker_serves_next_job(
    client_app: Celery,
    automl_worker: WorkerProcess,
    input_root: Path,
    diabetes_result: dict[str, Any],
) -> None:
    """Each bad input fails with its own error; afterwards the same worker answers a job."""
    for label, (text, kwargs, error, message) in BAD_INPUTS.items():
        name = label.replace(" ", "_") + ".csv"
        if text is not None:
            (input_root / name).write_text(text)
        job = {"data_path": name, "target": "target", **kwargs}
        with pytest.raises(error, match=message):
            _run(client_app, **job)
    assert automl_worker.process is not None and automl_worker.process.poll() is None
    result = _run(
        client_app,
        "tasks.automl_predict",
        model_path=diabetes_result["model_path"],
        data_path="diabetes.csv",
    )
    assert result["rows"] == 442


def test_progress_reports_phases_in_order(
    client_app: Celery, automl_worker: WorkerProcess, tables: dict[str, pd.DataFrame]
) -> None:
    """While a job runs its PROGRESS record names the phase; seen in the documented order."""
    order = ["loading", "feature_engineering", "model_search", "scoring"]
    job = client_app.send_task("tasks.automl", kwargs={"data_path": "wine.csv", "target": "target"})
    seen: list[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        meta = client_app.backend.get_task_meta(job.id)
        if meta["status"] in ("SUCCESS", "FAILURE"):
            break
        info = meta.get("result")
        if meta["status"] == "PROGRESS" and isinstance(info, dict) and info.get("phase"):
            assert 0.0 <= info["fraction"] < 1.0
            if not seen or seen[-1] != info["phase"]:
                seen.append(info["phase"])
        time.sleep(0.02)
    assert meta["status"] == "SUCCESS", meta
    assert "model_search" in seen, seen  # the long phase cannot be missed at 20 ms polls
    assert seen == sorted(seen, key=order.index), seen
