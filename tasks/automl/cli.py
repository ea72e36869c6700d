"""The AutoML family's command (``mlworker submit automl DATA --target T``) and demo job."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.jobs import (
    JobIdOption,
    PriorityOption,
    TimeoutOption,
    WaitOption,
    client,
    finish,
)

if TYPE_CHECKING:
    from worker.client import Job, MLClient

Summary = Callable[[dict[str, Any]], str]


def submit_automl(
    data_path: str,
    target: Annotated[str, typer.Option("--target", help="Column to predict.")],
    task_type: Annotated[str | None, typer.Option("--task-type")] = None,
    wait: WaitOption = False,
    job_id: JobIdOption = None,
    timeout: TimeoutOption = 3600.0,
    priority: PriorityOption = None,
) -> None:
    """Train on DATA_PATH (CSV/Parquet under the input root) to predict --target."""
    extra = {"task_type": task_type} if task_type else {}
    job = client().automl(data_path, target, job_id=job_id, priority=priority, **extra)
    finish(job, wait, timeout)


def install(groups: Mapping[str, typer.Typer]) -> None:
    groups["submit"].command("automl")(submit_automl)


def summarize(result: dict[str, Any]) -> str:
    return f"{result.get('chosen_model', '')} {json.dumps(result['metrics'])}"


def demo(client: MLClient, input_root: Path) -> dict[str, tuple[Job, Summary]]:
    """scikit-learn's diabetes table (shipped with scikit-learn), as a CSV to train on."""
    from sklearn.datasets import load_diabetes

    load_diabetes(as_frame=True).frame.to_csv(input_root / "diabetes.csv", index=False)
    return {"automl diabetes.csv": (client.automl("diabetes.csv", "target"), summarize)}
