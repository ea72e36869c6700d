"""``mlworker submit ...``, ``mlworker status`` and ``mlworker cancel``: enqueue jobs, look
at them, revoke them.

Each family adds its own ``submit <queue>`` command (its spec's ``cli``); the options and
the ending every submit command shares (``--wait``, ``--job-id``, ``--timeout``,
``--priority``, and ``--jsonl``/``--out`` for many jobs at once) are here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from worker.cli.broker import require_broker
from worker.client import JOB_KEY, Job, JobFailed, MLClient
from worker.errors import InvalidInput
from worker.metrics import PRIORITY_SUFFIXES

if TYPE_CHECKING:
    from worker.validation import RequestModel

submit = typer.Typer(help="Enqueue a job; prints its id (or, with --wait, its result).")
console = Console(stderr=True)

WaitOption = Annotated[bool, typer.Option("--wait", "-w", help="Show progress, print result.")]
JobIdOption = Annotated[
    str | None, typer.Option("--job-id", help="Your own id: a resubmit returns the same job.")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")]
PriorityOption = Annotated[
    int | None,
    typer.Option(
        "--priority",
        help="0 (most urgent; also what no --priority means) to 9; --jsonl defaults to 9.",
    ),
]
JsonlOption = Annotated[
    Path | None,
    typer.Option(
        "--jsonl",
        help="Many jobs: a file with one JSON object of kwargs a line (blank lines skipped).",
        exists=True,
        dir_okay=False,
    ),
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="With --jsonl: one result line per input line, in input order. Run the same "
        "command again to resume: lines already there are kept, jobs already sent are not "
        "sent again.",
        dir_okay=False,
    ),
]
RunIdOption = Annotated[
    str | None,
    typer.Option("--run-id", help="With --jsonl: names the run in its job ids (default: --out)."),
]

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

    family_queues = [*ml.families.queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE]
    # a message sent with a priority waits in one of kombu's per-priority lists of its queue
    queues = [queue + suffix for queue in family_queues for suffix in PRIORITY_SUFFIXES]
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


def cancel_job(job_id: str, terminate: bool) -> None:
    """Revoke a known job (exit 3 for an unknown id); say it was sent and the job's state."""
    ml = client()
    job = Job(job_id, "?", ml.app)
    state = job.state
    if state == "PENDING" and not is_known(ml, job_id):
        say(f"no job with id {job_id} is known (never sent, or its result expired)")
        raise typer.Exit(EXIT_NOT_FOUND)
    if state in ("SUCCESS", "FAILURE", "REVOKED"):
        typer.echo(f"job {job_id} already ended {state}: nothing to cancel")
        return
    job.cancel(terminate=terminate)
    how = "revoke (terminate: SIGTERM if running)" if terminate else "revoke"
    typer.echo(f"{how} sent to the workers for job {job_id}; its state: {job.state}")


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


# --- many jobs from a JSONL file -------------------------------------------------------------

#: namespace of ``--jsonl`` job ids: uuid5 of (run, line number, sha256 of the line)
JSONL_ID_NAMESPACE = uuid.UUID("6f1b7c52-3c0e-4a8e-9a55-4d1f0b3f2a17")


def one_source(single: object, jsonl: Path | None, out: Path | None, what: str) -> bool:
    """Whether this is a ``--jsonl`` run; a usage error unless exactly one of ``single``
    (the positional ``what``) and ``--jsonl`` is given, or ``--out`` is missing."""
    if (single is None) == (jsonl is None):
        raise typer.BadParameter(f"give either {what} or --jsonl FILE, not both or neither")
    if jsonl is not None and out is None:
        raise typer.BadParameter("--jsonl needs --out FILE for its results", param_hint="--out")
    return jsonl is not None


@dataclass(frozen=True)
class JsonlRun:
    """One ``--jsonl`` submit: which task, where lines come from and go, how they are sent."""

    model: type[RequestModel]
    source: Path
    out: Path
    run_id: str | None = None
    priority: int | None = None
    timeout: float = 3600.0
    #: turns a line's object into the task's kwargs (e.g. transcription's "path")
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def submit_jsonl(run: JsonlRun) -> None:
    """Run every line of ``run.source`` as a job; exit 0 if all succeed, 1 if any failed,
    4 when ``--timeout`` (or Ctrl-C) stopped the wait: run again to resume."""
    from worker.client import PRIORITY_BULK

    ml = client()
    if run.priority is None:
        run = replace(run, priority=PRIORITY_BULK)
    raise typer.Exit(run_jsonl(ml, run))


def run_jsonl(ml: MLClient, run: JsonlRun) -> int:
    """``submit_jsonl`` on ``ml``'s stack; the exit status."""
    from worker import bulk

    task = ml.families.task_of_request(run.model).name
    name = run.run_id or str(run.out.resolve())
    lines = [
        (n, text) for n, text in enumerate(run.source.read_text().splitlines(), 1) if text.strip()
    ]
    ids = {n: _job_id(name, n, text) for n, text in lines}
    kept = _kept_lines(run.out, ids)
    records: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, dict[str, Any]]] = []
    for n, text in lines:
        if n in kept:
            continue
        try:
            todo.append((n, _parse_line(run, text)))
        except InvalidInput as exc:
            records[n] = _failed(n, ids[n], exc)
    submitted = bulk.submit_many(
        ml.app, task, [kw for _, kw in todo], [ids[n] for n, _ in todo], run.priority
    )
    running: list[int] = []
    for (n, _), sent in zip(todo, submitted, strict=True):
        if isinstance(sent, InvalidInput):
            records[n] = _failed(n, ids[n], sent)
        else:
            running.append(n)
    again = sum(1 for s in submitted if not isinstance(s, InvalidInput) and s.resubmitted)
    say(
        f"{len(lines)} lines: {len(running) - again} sent, {again} submitted before (not sent "
        f"again), {len(kept)} kept from {run.out}, {len(records)} refused"
    )
    writer = _OrderedWriter(run.out, [n for n, _ in lines], kept)
    for n, record in records.items():
        writer.put(n, record)
    try:
        _collect(ml, [(n, ids[n]) for n in running], writer, len(lines), run.timeout)
    except (TimeoutError, KeyboardInterrupt):
        left = len(lines) - writer.written
        say(f"stopped waiting with {left} lines unfinished: run the same command to resume")
        return EXIT_STILL_RUNNING
    finally:
        writer.close()
    failed = writer.failures
    say(f"wrote {writer.written} lines to {run.out}; {failed} failed")
    return EXIT_FAILED if failed else 0


def _collect(
    ml: MLClient,
    running: list[tuple[int, str]],
    writer: _OrderedWriter,
    total: int,
    timeout: float,
) -> None:
    """Results as they arrive, into ``writer``, with a progress bar on stderr."""
    from worker import bulk

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started, arrived = time.monotonic(), 0
    with Progress(*columns, console=console, transient=True) as bar:
        handle = bar.add_task("jobs", total=total, completed=writer.received, rate="")
        for k, done in bulk.poll_many(ml.app, [job_id for _, job_id in running], timeout):
            n = running[k][0]
            if done.state == "SUCCESS":
                record = {"line": n, "job_id": done.job_id, "state": "SUCCESS"}
                writer.put(n, {**record, "result": done.result})
            else:
                writer.put(n, _failed(n, done.job_id, done.error, done.state))
            arrived += 1
            rate = arrived / max(time.monotonic() - started, 1e-6)
            bar.update(handle, completed=writer.received, rate=f"{rate:.1f} jobs/s")


def _parse_line(run: JsonlRun, text: str) -> dict[str, Any]:
    """A line's validated kwargs, or ``InvalidInput`` naming the field (``line`` if no JSON)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput("line", f"is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidInput("line", f"must be a JSON object of kwargs, got {type(value).__name__}")
    if run.prepare is not None:
        value = run.prepare(value)
    return run.model.parse(value).to_kwargs()


def _failed(
    n: int, job_id: str, error: BaseException | None, state: str = "FAILURE"
) -> dict[str, Any]:
    """An output line for a refused line or a failed job: ``error`` type, message, field."""
    problem = getattr(error, "problem", None)
    described: dict[str, Any] = {
        "type": type(error).__name__ if error is not None else state,
        "message": str(problem if problem is not None else error),
    }
    field = getattr(error, "field", None)
    if field is not None:
        described["field"] = str(field)
    return {"line": n, "job_id": job_id, "state": state, "error": described}


def _job_id(run: str, n: int, text: str) -> str:
    """The same run, line number and line content always get the same job id."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return str(uuid.uuid5(JSONL_ID_NAMESPACE, f"{run}\n{n}\n{digest}"))


def _kept_lines(out: Path, ids: Mapping[int, str]) -> dict[int, str]:
    """Lines of an earlier run's ``out`` still valid for this input: same line number and job
    id (so the same run and line content). A torn last line is dropped."""
    kept: dict[int, str] = {}
    if not out.exists():
        return kept
    for raw in out.read_text().splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        n = record.get("line") if isinstance(record, dict) else None
        if isinstance(n, int) and ids.get(n) == record.get("job_id") and "state" in record:
            kept[n] = raw
    return kept


class _OrderedWriter:
    """Writes output lines in input order as they become ready, into a temporary file that
    replaces ``out`` on close (with every line ready by then, in order, gaps left out)."""

    def __init__(self, out: Path, numbers: list[int], kept: Mapping[int, str]) -> None:
        self.out = out
        self.tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        self.order = sorted({*numbers, *kept})
        self.ready: dict[int, str] = dict(kept)
        self.next = 0
        self.written = 0
        self.received = len(kept)
        self.failures = sum(1 for raw in kept.values() if json.loads(raw)["state"] != "SUCCESS")
        self.file = self.tmp.open("w")

    def put(self, n: int, record: dict[str, Any]) -> None:
        self.ready[n] = json.dumps(record, ensure_ascii=False)
        self.received += 1
        self.failures += record["state"] != "SUCCESS"
        while self.next < len(self.order) and self.order[self.next] in self.ready:
            self._write(self.order[self.next])
            self.next += 1
        self.file.flush()

    def _write(self, n: int) -> None:
        self.file.write(self.ready.pop(n) + "\n")
        self.written += 1

    def close(self) -> None:
        for n in self.order[self.next :]:
            if n in self.ready:
                self._write(n)
        self.file.close()
        os.replace(self.tmp, self.out)
