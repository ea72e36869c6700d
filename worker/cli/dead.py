"""``mlworker dead list|show|requeue``: look at and replay the dead-letter queue."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.table import Table

from worker.cli.broker import require_broker
from worker.client import MLClient

dead = typer.Typer(help="Jobs set aside after too many deliveries.", no_args_is_help=True)


def _client() -> MLClient:
    require_broker()
    return MLClient()


@dead.command("list")
def dead_list() -> None:
    """Every parked job: id, task, when and why."""
    from worker.delivery import list_dead

    table = Table("id", "task", "dead since", "reason")
    for job in list_dead(_client().app):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.dead_at))
        table.add_row(job.id, job.task, when, job.reason)
    Console().print(table)


@dead.command("show")
def dead_show(job_id: str) -> None:
    """One parked job with its kwargs (long values abbreviated)."""
    from worker.delivery import list_dead

    for job in list_dead(_client().app):
        if job.id == job_id:
            typer.echo(json.dumps(job.summary(), ensure_ascii=False, indent=2))
            return
    typer.echo(f"no dead job {job_id}", err=True)
    raise typer.Exit(1)


@dead.command("requeue")
def dead_requeue(job_id: str) -> None:
    """Send a parked job back to its queue with a fresh delivery count."""
    from worker.delivery import requeue_dead

    job = requeue_dead(_client().app, job_id)
    if job is None:
        typer.echo(f"no dead job {job_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"requeued {job.id} ({job.task})")
