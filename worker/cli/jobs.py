"""``mlworker submit ...`` and ``mlworker status``: enqueue jobs and look at them.

Each family adds its own ``submit <queue>`` command (its spec's ``cli``); the options and
the ending every submit command shares (``--wait``, ``--job-id``, ``--timeout``) are here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.cli.broker import require_broker
from worker.client import JOB_KEY, Job, JobFailed, MLClient

submit = typer.Typer(help="Enqueue a job; prints its id (or, with --wait, its result).")
console = Console(stderr=True)

WaitOption = Annotated[bool, typer.Option("--wait", "-w", help="Show progress, print result.")]
JobIdOption = Annotated[
    str | None, typer.Option("--job-id", help="Your own id: a resubmit returns the same job.")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")]

#: exit status of a job that failed, or a request refused before it was sent
EXIT_FAILED = 1
#: exit status when there is nothing to look at: an unknown job id, a missing export
EXIT_NOT_FOUND = 3
#: exit status of ``--wait`` that gave up (timeout, Ctrl-C); the job may still run
EXIT_STILL_RUNNING = 4
#: the next step an operator can take, by error type (a family's command may add its own)
HINTS = {
    "PathOutsideRoot": "workers read files only under their MLWORKER_INPUT_ROOT: "
    "give a path inside it (relative to it)",
    "InputTooLarge": "the limits are settings: `mlworker config` shows them",
}


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
            meta = job.meta()
            state, info = str(meta["status"]), meta.get("result")
            done = job.progress() or 0.0
            step = info.get("phase") if state == "PROGRESS" and isinstance(info, dict) else None
            said = f"{job.task} {state}" + (f" ({step})" if step else "")
            bar.update(handle, completed=done, description=said)
            if state in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.2)
    return job.result(timeout=0.5)


def say(text: str) -> None:
    """One plain line on stderr, never wrapped, so ids, paths and commands copy whole."""
    console.print(escape(text), highlight=False, soft_wrap=True)


def report_error(exc_type: str, message: str, hints: Mapping[str, str] | None = None) -> None:
    """``Type: field: problem`` on stderr, then the hint for that type if there is one."""
    console.print(
        f"[red]{escape(exc_type)}[/red]: {escape(message)}", highlight=False, soft_wrap=True
    )
    hint = {**HINTS, **(hints or {})}.get(exc_type)
    if hint:
        say(f"hint: {hint}")


def finish(job: Job, wait: bool, timeout: float, hints: Mapping[str, str] | None = None) -> None:
    """Print the job id, or with ``wait`` show progress and print the result (exit 1 on failure).

    With ``wait`` the id goes to stderr first, so an interrupted wait still names the job.
    """
    if job.resubmitted:
        console.print(f"job id {job.id} was submitted before: not sent again")
    if not wait:
        typer.echo(job.id)
        return
    say(f"job {job.id}")
    try:
        result = wait_for(job, timeout)
    except JobFailed as exc:
        report_error(exc.exc_type, exc.message, hints)
        raise typer.Exit(EXIT_FAILED) from None
    except (TimeoutError, KeyboardInterrupt) as exc:
        why = f"still {job.state} after {timeout:g}s" if isinstance(exc, TimeoutError) else ""
        say(
            f"stopped waiting; job {job.id} {why or 'may still run'}: "
            f"`mlworker status {job.id}` shows it later"
        )
        raise typer.Exit(EXIT_STILL_RUNNING) from None
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2))


def show_job(job_id: str) -> None:
    """State and result (or error) of one job; exit 3 when no such job is known."""
    ml = client()
    meta = Job(job_id, "?", ml.app).meta()
    if meta["status"] == "PENDING" and not is_known(ml, job_id):
        say(f"no job with id {job_id} is known (never sent, or its result expired)")
        raise typer.Exit(EXIT_NOT_FOUND)
    if isinstance(meta.get("result"), BaseException):
        error = meta["result"]
        meta["result"] = {"exc_type": type(error).__name__, "message": str(error)}
    typer.echo(json.dumps(_jsonable(meta), ensure_ascii=False, indent=2))


def is_known(ml: MLClient, job_id: str) -> bool:
    """Whether a PENDING job exists: its id is claimed (``--job-id``), or its message waits
    in a queue or sits unacked (prefetched or buffered by a worker)."""
    from worker.family import DEAD_LETTER_QUEUE, UNROUTED_QUEUE

    queues = [*ml.families.queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE]
    with ml.app.connection_for_read() as conn:
        channel = conn.default_channel
        redis = channel.client
        if redis.exists(JOB_KEY + job_id):
            return True
        needle = job_id.encode()
        for queue in queues:
            if any(_names(raw, job_id) for raw in redis.lrange(queue, 0, -1) if needle in raw):
                return True
        unacked = redis.hvals(channel.unacked_key)
        return any(_names(raw, job_id) for raw in unacked if needle in raw)


def _names(raw: bytes, job_id: str) -> bool:
    """Whether a raw kombu message (or an unacked ``[message, exchange, key]``) is job_id's."""
    try:
        message = json.loads(raw)
    except ValueError:
        return False
    if isinstance(message, list) and message:
        message = message[0]
    if not isinstance(message, dict):
        return False
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    return job_id in (headers.get("id"), properties.get("correlation_id"))


def show_queues() -> None:
    """Queue depths and oldest message ages, then each live worker child with its queues,
    models and RSS."""
    from worker.families import load_families
    from worker.family import DEAD_LETTER_QUEUE, UNROUTED_QUEUE
    from worker.metrics import UNACKED_KEY, MetricsStore

    store = MetricsStore.from_url(require_broker())
    queues = [*load_families().queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE]
    depths = store.queue_depths(queues)
    ages = store.oldest_ages(queues)
    table = Table("queue", "waiting", "oldest")
    for queue in queues:
        oldest = f"{ages[queue]:.0f}s" if depths[queue] else "-"
        table.add_row(queue, str(depths[queue]), oldest)
    table.add_row("(unacked: prefetched, buffered or running)", str(depths[UNACKED_KEY]), "")
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
