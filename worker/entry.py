"""The worker entry: what turns the app into a worker of some queues.

``mlworker worker --queues Q`` and ``celery -A worker.app:app worker -Q Q`` both build
``app.Worker`` (``worker.app.MlworkerCelery``), which is this class, so both behave the same:

- only the families of the consumed queues get their tasks registered (a tags worker's
  parent never imports faster-whisper, autofeat or scikit-learn, and a job sent to the
  wrong queue fails as unregistered instead of running there);
- the prefetch multiplier is raised so a batched queue can buffer two full batches, unless
  one was asked for explicitly;
- it also consumes Celery's default queue ``celery``: a job sent there by a client that
  does not know mlworker's routes is passed on to its family's queue (``worker.guard``);
- every message is screened before Celery handles it (``worker.guard``): a malformed one
  is refused and recorded, never a reason for the worker to exit;
- the worker hooks are installed in their stated order (``worker.lifecycle``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.apps.worker import Worker
from celery.utils.text import str_to_list

from config import Settings, get_settings
from worker.app import DeclaredTask
from worker.batching import IsolatedBatches
from worker.families import load_families
from worker.family import UNROUTED_QUEUE, Families, FamilySpec, TaskSpec, resolve
from worker.jobs import PlainTask
from worker.lifecycle import WorkerPlan, install_worker_hooks


class MlworkerWorker(Worker):  # type: ignore[misc]
    """Celery's worker program, plus mlworker's per-queue setup before Celery's own."""

    def __init__(self, app: Celery | None = None, hostname: str | None = None, **kwargs: Any):
        app = app or self.app
        settings = get_settings()
        families = load_families(settings)
        queues = tuple(str_to_list(kwargs.get("queues") or ()))
        consumed = tuple(families.consuming(queues))
        kwargs["queues"] = consumed_queues(queues, families, settings)
        if kwargs.get("prefetch_multiplier") in (None, app.conf.worker_prefetch_multiplier):
            kwargs["prefetch_multiplier"] = families.prefetch(queues, settings)
        concurrency = int(kwargs.get("concurrency") or app.conf.worker_concurrency or 1)
        register_tasks(app, consumed, settings)
        guard_messages(app)
        # models preload for the families whose queue is consumed (none for a queue no
        # family declares: its worker loads on first use)
        preload = tuple(f for f in consumed if not queues or f.queue in queues)
        install_worker_hooks(WorkerPlan(queues or families.queues, preload, concurrency))
        super().__init__(app=app, hostname=hostname, **kwargs)


def consumed_queues(asked: tuple[str, ...], families: Families, settings: Settings) -> list[str]:
    """The queues a worker listens on: those asked for (every family's when none; never the
    dead-letter queue, which only ``mlworker dead requeue`` empties) plus Celery's default
    queue, whose jobs the guard passes on to their families (``consume_unrouted``)."""
    queues = list(asked or families.queues)
    if settings.consume_unrouted and UNROUTED_QUEUE not in queues:
        queues.append(UNROUTED_QUEUE)
    return queues


def guard_messages(app: Celery) -> None:
    """No message's content stops this worker (``worker.guard``): Celery's consumer and,
    on a redis broker, kombu's transport are replaced by their guarded subclasses."""
    app.conf.worker_consumer = "worker.guard:GuardedConsumer"
    scheme = urlsplit(str(app.conf.broker_url or "")).scheme
    if scheme in ("redis", "rediss") and not app.conf.broker_transport:
        app.conf.broker_transport = "worker.guard:GuardedTransport"


def register_tasks(app: Celery, families: tuple[FamilySpec, ...], settings: Settings) -> None:
    """Replace the declared stand-ins of the ``families``' tasks by real tasks, and drop the
    other families' stand-ins: this worker runs only its own queues' families."""
    for name in [n for n, task in app.tasks.items() if isinstance(task, DeclaredTask)]:
        app.tasks.unregister(name)
    for family in families:
        for spec in family.tasks:
            app.register_task(build_task(family, spec, settings))


def build_task(family: FamilySpec, spec: TaskSpec, settings: Settings) -> Any:
    """A Celery task for ``spec``: a ``PlainTask`` or an ``IsolatedBatches`` around its handler."""
    handler = resolve(spec.handler)()
    attrs: dict[str, Any] = {
        "name": spec.name,
        "handler": handler,
        "family": family.queue,
        # staticmethod: a plain function as a class attribute would bind as a method
        "chain_input": staticmethod(resolve(spec.chain_input)) if spec.chain_input else None,
        "__module__": type(handler).__module__,
        "__doc__": type(handler).__doc__,
    }
    base: type = PlainTask
    if spec.batch is not None:
        base = IsolatedBatches
        attrs.update(
            flush_every=spec.batch.size(settings),
            flush_interval=spec.batch.flush_interval_s(settings),
            flush_idle_s=settings.batch_idle_flush_s,
        )
    task_class = type(f"{type(handler).__name__}Task", (base,), attrs)
    return task_class()
