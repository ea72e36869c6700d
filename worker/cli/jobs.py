"""``mlworker submit ...`` and ``mlworker status``: enqueue jobs and look at them.

Each family adds its own ``submit <queue>`` command (its spec's ``cli``); the options and
the ending every submit command shares (``--wait``, ``--job-id``, ``--timeout``) are here.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.cli.broker import require_broker
from worker.client import Job, JobFailed, MLClient

submit = typer.Typer(help="Enqueue a job; prints its id (or, with --wait, its result).")
console = Console(stderr=True)

WaitOption = Annotated[bool, typer.Option("--wait", "-w", help="Show progress, print result.")]
JobIdOption = Annotated[
    str | None, typer.Option("--job-id", help="Your own id: a resubmit returns the same job.")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")]


def client() -> MLClient:
    """A client of the stack this command joins."""
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


def finish(job: Job, wait: bool, timeout: float) -> None:
    """Print the job id, or with ``wait`` show progress and print the result (exit 1 on failure)."""
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


def show_job(job_id: str) -> None:
    """State and result (or error) of one job."""
    meta = Job(job_id, "?", client().app).meta()
    typer.echo(json.dumps(_jsonable(meta), ensure_ascii=False, indent=2))


def show_queues() -> None:
    """Queue depths, then each live worker child with its queues, models and RSS."""
    from worker.families import load_families
    from worker.family import DEAD_LETTER_QUEUE, UNROUTED_QUEUE
    from worker.metrics import UNACKED_KEY, MetricsStore

    store = MetricsStore.from_url(require_broker())
    queues = [*load_families().queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE]
    depths = store.queue_depths(queues)
    table = Table("queue", "waiting")
    for queue in queues:
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
