"""The Celery app, ``worker.app:app``, built from settings.

JSON only (pickle/yaml refused: deserialising them is code execution over Redis), one queue
per job family plus a dead-letter queue, routing by task name, late acks with requeue on a
lost worker, a visibility timeout above the longest time limit.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from config import Settings, get_settings

#: family queue per task name; apps may ``send_task(name, kwargs=...)`` without our code.
ROUTES = {
    "tasks.transcribe": "transcribe",
    "tasks.extract_tags": "tags",
    "tasks.automl": "automl",
    "tasks.automl_predict": "automl",
}
FAMILY_QUEUES = ("transcribe", "tags", "automl")
DEAD_LETTER_QUEUE = "dead_letter"
#: the task module each family queue needs; a worker imports only its queues' modules, so a
#: tags worker's parent does not carry faster-whisper, autofeat and scikit-learn (~420 MB)
TASK_MODULES = {
    "transcribe": "tasks.transcription.task",
    "tags": "tasks.tags.task",
    "automl": "tasks.automl.task",
}


def task_modules(queues: str | None) -> list[str]:
    """Modules for a comma-separated queue list; all of them when unset or not all known."""
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    if not names or any(q not in TASK_MODULES for q in names):
        return list(TASK_MODULES.values())
    return [TASK_MODULES[q] for q in names]


#: the redis default a client falls back to when nothing is configured (the CLI never does)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def build_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app; ``settings`` defaults to the environment's."""
    s = settings or get_settings()
    broker = s.broker_url() or DEFAULT_REDIS_URL
    backend = s.backend_url() or broker
    celery_app = Celery("mlworker", broker=broker, backend=backend, include=task_modules(None))
    exchange = Exchange("mlworker", type="direct")
    longest_limit = max(s.transcribe_time_limit_s, s.tags_time_limit_s, s.automl_time_limit_s)
    transport = {"visibility_timeout": max(s.visibility_timeout_s, longest_limit + 60)}
    celery_app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=[
            *(Queue(q, exchange, routing_key=q) for q in FAMILY_QUEUES),
            Queue(DEAD_LETTER_QUEUE, exchange, routing_key=DEAD_LETTER_QUEUE),
        ],
        task_default_exchange="mlworker",
        task_default_queue="tags",
        task_routes={name: {"queue": q, "routing_key": q} for name, q in ROUTES.items()},
        # hard limit per family; the soft limit (90%) lets a job fail cleanly first
        task_annotations={
            name: {"time_limit": limit, "soft_time_limit": int(limit * 0.9)}
            for name, limit in (
                ("tasks.transcribe", s.transcribe_time_limit_s),
                ("tasks.extract_tags", s.tags_time_limit_s),
                ("tasks.automl", s.automl_time_limit_s),
                ("tasks.automl_predict", s.automl_time_limit_s),
            )
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
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
    return celery_app


app = build_app()

import worker.signals  # noqa: E402,F401  (connects the per-process model preload)
