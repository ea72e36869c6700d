"""``mlworker metrics``: the Prometheus exporter for queue depths and worker metrics."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from config import get_settings

PortOption = Annotated[int | None, typer.Option("--port", "-p", help="Port to serve /metrics on.")]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="Bind address (0.0.0.0 in a container).")
]


def metrics(port: PortOption = None, address: AddressOption = None) -> None:
    """Serve Prometheus metrics: queue depths read at scrape time plus what workers record."""
    from prometheus_client import start_http_server

    from worker.cli.broker import require_broker
    from worker.families import load_families
    from worker.metrics import MetricsStore, build_registry

    url = require_broker()
    settings = get_settings()
    bind = address or settings.metrics_address
    listen = port if port is not None else settings.metrics_port
    server, thread = start_http_server(
        listen,
        addr=bind,
        registry=build_registry(MetricsStore.from_url(url), load_families(settings).queues),
    )
    typer.echo(f"metrics http://{bind}:{server.server_port}/metrics", err=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
    typer.echo("metrics stopped", err=True)
