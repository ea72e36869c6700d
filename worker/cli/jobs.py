"""``mlworker submit ...`` and ``mlworker status``: enqueue jobs and look at them."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.client import Job, JobFailed, MLClient

submit = typer.Typer(help="Enqueue a job; prints its id (or, with --wait, its result).")
console = Console(stderr=True)

WaitOption = Annotated[bool, typer.Option("--wait", "-w", help="Show progress, print result.")]
JobIdOption = Annotated[
    str | None, typer.Option("--job-id", help="Your own id: a resubmit returns the same job.")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")]


def _client() -> MLClient:
    from worker.cli.main import require_broker

    require_broker()
    return MLClient()


def wait_for(job: Job, timeout: float) -> dict[str, Any]:
    """Rich progress bar from the task's PROGRESS state until it finishes."""
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        handle = bar.add_task(f"{job.task} {job.id[:8]} PENDING", total=1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = job.state
            bar.update(handle, completed=job.progress() or 0.0, description=f"{job.task} {state}")
            if state in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.2)
    return job.result(timeout=0.5)


def _finish(job: Job, wait: bool, timeout: float) -> None:
    if job.resubmitted:
        console.print(f"job id {job.id} was submitted before: not sent again")
    if not wait:
        typer.echo(job.id)
        return
    try:
        result = wait_for(job, timeout)
    except JobFailed as exc:
        console.print(f"[red]{exc.exc_type}[/red]: {exc.message}")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2))


@submit.command("tags")
def submit_tags(
    text: str,
    top_n: Annotated[int, typer.Option("--top-n")] = 5,
    language: str = "auto",
    wait: WaitOption = False,
    job_id: JobIdOption = None,
    timeout: TimeoutOption = 300.0,
) -> None:
    """Extract keyphrases from TEXT."""
    _finish(_client().extract_tags(text, top_n, language=language, job_id=job_id), wait, timeout)


@submit.command("transcribe")
def submit_transcribe(
    audio: Annotated[str, typer.Argument(help="Path under the input root, or a local file.")],
    inline: Annotated[bool, typer.Option("--inline", help="Send the file as audio_b64.")] = False,
    language: str | None = None,
    output_format: Annotated[list[str] | None, typer.Option("--format")] = None,
    wait: WaitOption = False,
    job_id: JobIdOption = None,
    timeout: TimeoutOption = 1800.0,
) -> None:
    """Transcribe AUDIO (a path the workers can read, or inline with --inline)."""
    client = _client()
    if inline:
        b64 = base64.b64encode(Path(audio).read_bytes()).decode()
        job = client.transcribe(
            audio_b64=b64, language=language, output_formats=output_format, job_id=job_id
        )
    else:
        job = client.transcribe(
            audio, language=language, output_formats=output_format, job_id=job_id
        )
    _finish(job, wait, timeout)


@submit.command("automl")
def submit_automl(
    data_path: str,
    target: Annotated[str, typer.Option("--target", help="Column to predict.")],
    task_type: Annotated[str | None, typer.Option("--task-type")] = None,
    wait: WaitOption = False,
    job_id: JobIdOption = None,
    timeout: TimeoutOption = 3600.0,
) -> None:
    """Train on DATA_PATH (CSV/Parquet under the input root) to predict --target."""
    extra = {"task_type": task_type} if task_type else {}
    _finish(_client().automl(data_path, target, job_id=job_id, **extra), wait, timeout)


def show_job(job_id: str) -> None:
    """State and result (or error) of one job."""
    client = _client()
    meta = Job(job_id, "?", client.app).meta()
    typer.echo(json.dumps(_jsonable(meta), ensure_ascii=False, indent=2))


def show_queues() -> None:
    """Queue depths, then each live worker child with its queues, models and RSS."""
    from worker.app import DEAD_LETTER_QUEUE, FAMILY_QUEUES
    from worker.cli.main import require_broker
    from worker.metrics import UNACKED_KEY, MetricsStore

    store = MetricsStore.from_url(require_broker())
    depths = store.queue_depths([*FAMILY_QUEUES, DEAD_LETTER_QUEUE])
    table = Table("queue", "waiting")
    for queue in (*FAMILY_QUEUES, DEAD_LETTER_QUEUE):
        table.add_row(queue, str(depths[queue]))
    table.add_row("(unacked: prefetched, buffered or running)", str(depths[UNACKED_KEY]))
    out = Console()
    out.print(table)
    workers = Table("worker", "pid", "queues", "models", "RSS MB")
    for proc in sorted(store.processes(), key=lambda p: (p.get("node", ""), p.get("pid", ""))):
        rss_mb = int(proc.get("rss_bytes", "0")) / (1024 * 1024)
        workers.add_row(
            proc.get("node", "?"),
            proc.get("pid", "?"),
            proc.get("queues", ""),
            proc.get("models", ""),
            f"{rss_mb:.0f}",
        )
    out.print(workers)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {k: _jsonable(v) for k, v in value.items()}
        return repr(value)
