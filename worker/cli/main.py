"""``mlworker``: run workers, the local stack, submit jobs and look at them."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from typing import Annotated

import typer

from config import get_settings
from worker.cli.broker import URL_ENV, resolve_url

cli = typer.Typer(help="Celery job workers for ML.", no_args_is_help=True, add_completion=False)

QueuesOption = Annotated[
    str, typer.Option("--queues", "-Q", help="Comma-separated queues: transcribe,tags,automl.")
]


def prefetch_for(queues: list[str]) -> int:
    """Messages each child reserves: a batch task needs a full batch buffered, others one."""
    s = get_settings()
    wanted = {"tags": 2 * s.tags_batch_size, "transcribe": 2 * s.transcribe_batch_size}
    return max([1, *(wanted.get(q, 1) for q in queues)])


def require_broker() -> str:
    """The broker URL for a command that joins an existing stack, exported for Celery."""
    url = resolve_url(get_settings())
    if not url:
        typer.echo(
            f"no broker: set {URL_ENV} or start the local stack with `mlworker up`", err=True
        )
        raise typer.Exit(2)
    os.environ[URL_ENV] = url
    get_settings.cache_clear()
    return url


@cli.command()
def worker(
    queues: QueuesOption = "transcribe,tags,automl",
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
    from worker.app import app

    node = hostname or f"{'-'.join(names)}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [
        "worker",
        "--queues", ",".join(names),
        "--concurrency", str(settings.concurrency),
        "--prefetch-multiplier", str(prefetch_for(names)),
        "--hostname", node,
        "--loglevel", loglevel,
        "--pool", "prefork",
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    app.worker_main(argv=argv)


def main() -> None:
    cli(prog_name="mlworker")


if __name__ == "__main__":
    sys.exit(main())
