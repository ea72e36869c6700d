"""``mlworker``: run workers, the local stack, submit jobs and look at them."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from config import get_settings
from worker.cli.broker import require_broker
from worker.cli.dead import dead
from worker.cli.jobs import submit
from worker.cli.ops import metrics
from worker.families import load_families
from worker.family import resolve

cli = typer.Typer(help="Celery job workers for ML.", no_args_is_help=True, add_completion=False)
models = typer.Typer(
    help="Export, verify and list accelerated models (offline, one-time steps).",
    no_args_is_help=True,
)
verify = typer.Typer(
    help="Check an exported or quantized model against FP32.", no_args_is_help=True
)
models.add_typer(verify, name="verify")
cli.add_typer(submit, name="submit")
cli.add_typer(dead, name="dead")
cli.add_typer(models, name="models")
cli.command()(metrics)
#: command groups a family's ``cli`` hook adds its commands to
GROUPS = {"submit": submit, "models": models, "verify": verify}
for _family in load_families():
    if _family.cli:
        resolve(_family.cli)(GROUPS)

ALL_QUEUES = ",".join(load_families().queues)
QueuesOption = Annotated[
    str, typer.Option("--queues", "-Q", help=f"Comma-separated queues: {ALL_QUEUES}.")
]


@cli.command()
def worker(
    queues: QueuesOption = ALL_QUEUES,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
    hostname: Annotated[str | None, typer.Option("--hostname", "-n")] = None,
) -> None:
    """Run one Celery worker consuming QUEUES (models for those queues load per child)."""
    require_broker()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if concurrency is not None:
        os.environ["MLWORKER_CONCURRENCY"] = str(concurrency)
        get_settings.cache_clear()
    settings = get_settings()
    from worker.app import app  # its worker registers only these queues' families

    node = hostname or f"{'-'.join(names)}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [
        "worker",
        "--queues", ",".join(names),
        "--concurrency", str(settings.concurrency),
        "--hostname", node,
        "--loglevel", loglevel,
        "--pool", "prefork",
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    app.worker_main(argv=argv)


@cli.command()
def up(
    queues: QueuesOption = ALL_QUEUES,
    flower: Annotated[bool, typer.Option(help="Start Flower too.")] = True,
    metrics: Annotated[bool, typer.Option(help="Start the Prometheus exporter too.")] = True,
    log_dir: Annotated[
        Path | None, typer.Option(help="Child logs go here (default: STATE_DIR/logs).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Child logs on this terminal, not in files.")
    ] = False,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds every component gets to answer before up gives up.")
    ] = 300.0,
) -> None:
    """Run the local stack: Redis (embedded unless configured), a worker per queue, Flower
    and the metrics exporter; one line per component once it answers, then "ready".

    Ctrl-C (or SIGTERM) stops every process it started, the redis-server last.
    """
    from worker.cli.broker import private_state_dir
    from worker.cli.stack import FLOWER_PASSWORD_FILE, FLOWER_USER, local_stack

    settings = get_settings()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    logs = None if verbose else (log_dir or private_state_dir(settings) / "logs")
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    try:
        with local_stack(settings) as stack:
            line = "{:<16} {}".format
            typer.echo(line("broker", _redact(stack.url)), err=True)
            for queue in names:
                stack.start_worker(queue, logs, {})
            if flower:
                stack.start_flower(logs)
            if metrics:
                stack.start_metrics(logs)
            if logs:
                typer.echo(line("logs", f"{logs}/<component>.log"), err=True)

            def ready(child: Any) -> None:
                where = child.address or ""
                if child.name == "flower" and not settings.flower_basic_auth:
                    password = private_state_dir(settings) / FLOWER_PASSWORD_FILE
                    where += f"  (login {FLOWER_USER}, password in {password})"
                typer.echo(line(child.name, where), err=True)

            missing = stack.wait_ready(ready_timeout, ready)
            if not missing:
                typer.echo("ready; Ctrl-C stops everything", err=True)
                while not stack.dead():
                    time.sleep(0.5)
                missing = stack.dead()
            for child in missing:
                code = child.process.poll()
                said = f"exited with {code}" if code is not None else "did not answer in time"
                log = f"; log: {child.log_path}" if child.log_path else ""
                typer.echo(f"{child.name} {said}{log}", err=True)
            raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


@cli.command()
def status(job_id: Annotated[str | None, typer.Argument()] = None) -> None:
    """One job's state and result, or (no JOB_ID) queue depths and workers.

    A job is known when the result store has a state for it (STARTED, RETRY, PROGRESS,
    SUCCESS, FAILURE), or, while PENDING, when its message still waits in a queue or sits
    unacked at a worker, or its --job-id is claimed. Anything else exits 3: never sent, or
    its result expired.
    """
    from worker.cli.jobs import show_job, show_queues

    if job_id:
        show_job(job_id)
    else:
        show_queues()


@cli.command()
def cancel(
    job_id: str,
    terminate: Annotated[
        bool,
        typer.Option("--terminate", help="Also stop it if already running (SIGTERM to its child)."),
    ] = False,
) -> None:
    """Revoke JOB_ID: workers discard it unstarted (state REVOKED); exit 3 if unknown.

    Known means what it does for `status`. The revoke goes to the workers online now; a job
    that already ended is left alone.
    """
    from worker.cli.jobs import cancel_job

    cancel_job(job_id, terminate)


@cli.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all jobs.")] = 600.0,
) -> None:
    """Start a private stack, run one job of every family on bundled samples, print, stop."""
    from worker.cli.demo import run_demo

    raise typer.Exit(run_demo(timeout))


@cli.command("config")
def show_config() -> None:
    """The effective settings (secrets redacted)."""
    for name, value in get_settings().model_dump().items():
        typer.echo(f"{name} = {_redact(str(value))}")


def _redact(url: str) -> str:
    """Hide a password in a URL (redis://:secret@host -> redis://:***@host)."""
    return re.sub(r"(://[^:/@]*:)[^@]+@", r"\1***@", url)


def main() -> None:
    """The ``mlworker`` entry point: a request the client refuses is one line, not a traceback."""
    from worker.cli.jobs import EXIT_FAILED, report_error
    from worker.errors import JobError

    try:
        cli(prog_name="mlworker")
    except JobError as exc:
        report_error(type(exc).__name__, str(exc))
        raise SystemExit(EXIT_FAILED) from None


if __name__ == "__main__":
    main()
