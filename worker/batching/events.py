"""Flower events for each request of a batch, so Flower shows requests, not one batch.

celery-batches runs a batch as one task execution: the worker sends events for the batch
task only. A ``RequestEvents`` per batch sends ``task-started`` for each request when the
batch starts and ``task-succeeded``/``task-failed`` as each request's outcome is stored.
Monitoring never fails a job: every error here is logged at debug level and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)


class RequestEvents:
    """One event dispatcher for one batch's requests (a no-op when events are off)."""

    def __init__(self, app: Celery, job_ids: Sequence[str], hostname: str | None) -> None:
        self.dispatcher: Any = None
        if not app.conf.worker_send_task_events or not job_ids:
            return
        try:
            self.dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname=hostname)
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("no event dispatcher: %r", exc)
            return
        for job_id in job_ids:
            self.send(job_id, "task-started")

    def send(self, job_id: str, kind: str, **fields: Any) -> None:
        if self.dispatcher is None:
            return
        try:
            self.dispatcher.send(kind, uuid=job_id, **fields)
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("event %s for %s not sent: %r", kind, job_id, exc)

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
