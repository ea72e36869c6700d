"""The Celery app, ``worker.app:app``, built from settings by a pure function.

JSON only (pickle/yaml refused: deserialising them is code execution over Redis), one queue
per registered job family plus a dead-letter queue, routing by task name, late acks with
requeue on a lost worker, a visibility timeout above the longest time limit.

Building the app connects no signal and imports no task: a client gets an app that can send
and read jobs, nothing else. A *worker* built from it (``mlworker worker`` or ``celery -A
worker.app:app worker``: both go through ``app.Worker``) registers its queues' tasks and
installs the worker hooks itself (``worker.entry``).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task
from kombu.entity import Exchange, Queue

from config import Settings, get_settings
from worker.families import load_families
from worker.family import DEAD_LETTER_QUEUE, UNROUTED_QUEUE, Families
from worker.metrics import SENT_AT_HEADER

#: the redis default a client falls back to when nothing is configured (the CLI never does)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: the soft time limit's share of the hard one: the job fails cleanly before it is killed
SOFT_LIMIT_SHARE = 0.9


class MlworkerCelery(Celery):  # type: ignore[misc]
    """Celery whose worker is mlworker's (``worker.entry.MlworkerWorker``) and whose
    messages say when they were sent (the exporter's oldest-message age reads it)."""

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        """Celery's ``send_task`` (``apply_async`` and retries go through it) stamping
        ``x-sent-at``; a header here rather than a ``before_task_publish`` receiver, so that
        building the app connects no signal and other apps in the process are left alone."""
        headers = {SENT_AT_HEADER: time.time(), **(options.pop("headers", None) or {})}
        return super().send_task(name, *args, headers=headers, **options)

    @property
    def Worker(self) -> type:  # noqa: N802 - Celery's name
        return self.subclass_with_self("worker.entry:MlworkerWorker")  # type: ignore[no-any-return]


class DeclaredTask(Task):  # type: ignore[misc]
    """A registered family's task as a client or Flower sees it: its name, routes and
    limits, so ``app.tasks[name].apply_async`` (Flower's REST API) sends it. It never runs
    here: a worker replaces it with the real task (``worker.entry``)."""

    abstract = True

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.name} runs on a worker of its family's queue")


def build_app(settings: Settings | None = None, families: Families | None = None) -> Celery:
    """A configured Celery app for ``settings`` (default: the environment's) and the
    registered ``families``; nothing else is read or changed."""
    s = settings or get_settings()
    fams = families or load_families(s)
    broker = s.broker_url() or DEFAULT_REDIS_URL
    backend = s.backend_url() or broker
    celery_app = MlworkerCelery("mlworker", broker=broker, backend=backend)
    exchange = Exchange("mlworker", type="direct")
    limits = {task.name: task.time_limit_s(s) for task in fams.tasks()}
    transport = {"visibility_timeout": max(s.visibility_timeout_s, max(limits.values()) + 60)}
    celery_app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[
            *(Queue(q, exchange, routing_key=q) for q in fams.queues),
            Queue(DEAD_LETTER_QUEUE, exchange, routing_key=DEAD_LETTER_QUEUE),
            # Celery's default queue, as a client without our routes declares it
            Queue(UNROUTED_QUEUE, Exchange(UNROUTED_QUEUE), routing_key=UNROUTED_QUEUE),
        ],
        task_default_exchange="mlworker",
        task_default_queue=fams.queues[0],
        task_routes={name: {"queue": q, "routing_key": q} for name, q in fams.routes().items()},
        task_annotations={
            name: {"time_limit": limit, "soft_time_limit": int(limit * SOFT_LIMIT_SHARE)}
            for name, limit in limits.items()
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,  # the worker entry raises it for batched queues
        worker_concurrency=s.concurrency,
        worker_proc_alive_timeout=s.proc_alive_timeout_s,
        # a child over the hard RSS threshold refuses jobs (worker.admission); recycle it
        worker_max_memory_per_child=(s.max_memory_per_child_mb or s.memory_hard_rss_mb) * 1024,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        result_expires=s.result_expires_s,
        # a result stored while Redis restarts waits for it instead of being dropped (the
        # batch would be acked with its results lost)
        result_backend_always_retry=True,
        result_backend_max_retries=60,
        result_backend_max_sleep_between_retries_ms=2000,
        result_extended=False,  # kwargs (audio_b64, texts) stay out of the result store
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        redis_backend_health_check_interval=30,
        timezone="UTC",
    )
    for task in fams.tasks():
        celery_app.register_task(type("Declared", (DeclaredTask,), {"name": task.name})())
    return celery_app


app = build_app()
