"""The worker hooks, installed by the worker entry in one stated order.

Nothing here runs on import. ``install_worker_hooks`` is called by ``worker.entry`` when a
worker (never a client) is built, before Celery sets up logging, the pool or the consumer:

1. ``recovery``: Redis channels restore what a lost connection held (before the consumer
   connects);
2. ``logs``: JSON or redacted text formatters (Celery sets up logging next);
3. ``shutdown``: SIGTERM's warm shutdown turns cold after ``shutdown_grace_s``;
4. child start: cap threads, register the families' models, preload this worker's models;
5. ``telemetry``: per-job log line and metrics; its child-start hook runs after 4, so the
   model loads it counts include the preload;
6. ``webhooks``: the main process's callback delivery thread (once the consumer is ready,
   after the pool has forked) and the callback of a job discarded as revoked.

Celery calls a signal's receivers in the order they were connected, so the order above is
the order they run in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.exceptions import TaskRevokedError

from config import get_settings
from worker import logs, recovery, shutdown, telemetry, webhooks
from worker.family import FamilySpec
from worker.registry import configure_threads, registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process runs: its queues' families and how many children."""

    queues: tuple[str, ...]
    families: tuple[FamilySpec, ...]
    concurrency: int

    def preload_models(self) -> list[str]:
        return [m.name for spec in self.families for m in spec.models if m.preload]


_installed: list[WorkerPlan] = []


def install_worker_hooks(plan: WorkerPlan) -> None:
    """Connect the worker hooks in the order of the module docstring (once per process)."""
    if _installed:
        return
    _installed.append(plan)
    recovery.install()
    logs.install()
    shutdown.install()

    def init_child(**_: Any) -> None:
        _init_child(plan)

    signals.worker_process_init.connect(init_child, weak=False, dispatch_uid="mlworker-child")
    telemetry.install(plan.queues)
    _install_webhooks()


def _install_webhooks() -> None:
    """Start the delivery loop when the worker is ready; queue a revoked job's callback."""
    loops: list[webhooks.DeliveryLoop] = []

    def start_loop(sender: Any = None, **_: Any) -> None:
        loop = webhooks.DeliveryLoop(sender.app.backend.client, get_settings())
        loops.append(loop)
        loop.start()

    def stop_loop(**_: Any) -> None:
        for loop in loops:
            loop.stop()

    def revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
        url = (getattr(request, "kwargs", None) or {}).get("callback_url")
        if url is None or sender is None:
            return
        settings = get_settings()
        try:
            webhooks.check_callback(url, settings)
        except Exception:  # noqa: BLE001 - nowhere safe to report to
            return
        client = sender.app.backend.client
        name = getattr(request, "name", None) or sender.name
        webhooks.record_outcome(
            client, settings, url, request.id, name, "REVOKED", TaskRevokedError("revoked")
        )

    signals.worker_ready.connect(start_loop, weak=False, dispatch_uid="mlworker-webhooks")
    signals.worker_shutdown.connect(stop_loop, weak=False, dispatch_uid="mlworker-webhooks")
    signals.task_revoked.connect(revoked, weak=False, dispatch_uid="mlworker-webhooks")


def _init_child(plan: WorkerPlan) -> None:
    """Cap threads, then load this worker's models before the child takes its first job."""
    settings = get_settings()
    registry.configure(settings)
    configure_threads(settings.child_threads(plan.concurrency))
    if settings.preload:
        names = plan.preload_models()
        log.info("preloading %s for queues %s", names, list(plan.queues))
        registry.preload(names)
    log.info("mlworker child ready pid=%d models=%s", os.getpid(), registry.loaded_names())
