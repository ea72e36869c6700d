"""Bounded redelivery and the dead-letter queue.

A job that kills its worker (OOM kill, segfault) is requeued by ``reject_on_worker_lost``
forever unless something counts (celery discussion #8969). Each start of a job increments
a counter in Redis keyed by task id; past ``max_deliveries`` the job is not run again but
moved, as a normal Celery message, to the dead-letter queue with the reason, and its result
becomes a ``DeadLettered`` failure. ``mlworker dead list|show|requeue`` works on that queue.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from worker.errors import JobError
from worker.family import DEAD_LETTER_QUEUE

DELIVERY_KEY = "mlworker:deliveries:"
#: counters outlive any redelivery window but not the results they guard
DELIVERY_TTL_S = 7 * 24 * 3600


class DeadLettered(JobError):
    """The job was delivered more than ``max_deliveries`` times and was set aside."""


def _redis(app: Celery) -> Any:
    """The redis client under the result backend (same server as the broker here)."""
    return app.backend.client


def count_delivery(app: Celery, task_id: str) -> int:
    """Record one more start of ``task_id``; returns how many starts there have been."""
    client = _redis(app)
    key = DELIVERY_KEY + task_id
    pipe = client.pipeline()
    pipe.incr(key)
    pipe.expire(key, DELIVERY_TTL_S)
    count, _ = pipe.execute()
    return int(count)


def forget_starts(client: Any, task_id: str) -> None:
    """Start counting ``task_id`` afresh (a deferred job's resumed run is a new start)."""
    client.delete(DELIVERY_KEY + task_id)


def previous_starts(app: Celery, task_ids: list[str]) -> list[int]:
    """How many times each of ``task_ids`` was started before (one MGET, no increment)."""
    if not task_ids:
        return []
    raw = _redis(app).mget([DELIVERY_KEY + task_id for task_id in task_ids])
    return [int(value or 0) for value in raw]


def reset_deliveries(app: Celery, task_id: str) -> None:
    _redis(app).delete(DELIVERY_KEY + task_id)


def dead_letter(
    app: Celery,
    task_name: str,
    task_id: str,
    kwargs: dict[str, Any],
    reason: str,
    excerpt: str | None = None,
) -> DeadLettered:
    """Park the job on the dead-letter queue and return the error its result records.

    ``excerpt``: the start of a refused message's raw body, kept for an operator.
    """
    headers: dict[str, Any] = {"x-dead-reason": reason, "x-dead-at": time.time()}
    if excerpt is not None:
        headers["x-dead-excerpt"] = excerpt
    app.send_task(
        task_name,
        kwargs=kwargs,
        task_id=task_id,
        queue=DEAD_LETTER_QUEUE,
        routing_key=DEAD_LETTER_QUEUE,
        headers=headers,
    )
    return DeadLettered("delivery", reason)


@dataclass
class DeadJob:
    """One parked message as a person sees it."""

    id: str
    task: str
    reason: str
    dead_at: float
    kwargs: dict[str, Any]
    raw: bytes

    def summary(self) -> dict[str, Any]:
        kwargs = {
            k: (v if len(repr(v)) < 120 else f"<{len(repr(v))} chars>")
            for k, v in self.kwargs.items()
        }
        return {"id": self.id, "task": self.task, "reason": self.reason,
                "dead_at": self.dead_at, "kwargs": kwargs}  # fmt: skip


def _parse(raw: bytes) -> DeadJob:
    """One parked message; anything pushed there by hand shows as unreadable, not a crash."""
    try:
        message = json.loads(raw)
        headers = message.get("headers") or {}
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return DeadJob(
            id=str(headers.get("id", "?")),
            task=str(headers.get("task", "?")),
            reason=str(headers.get("x-dead-reason", "")),
            dead_at=float(headers.get("x-dead-at", 0.0)),
            kwargs=dict(kwargs),
            raw=raw,
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return DeadJob("?", "?", f"unreadable dead-letter entry ({exc!r})", 0.0, {}, raw)


def list_dead(app: Celery) -> list[DeadJob]:
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        return [_parse(raw) for raw in client.lrange(DEAD_LETTER_QUEUE, 0, -1)]


def requeue_dead(app: Celery, job_id: str) -> DeadJob | None:
    """Move one parked job back to its family queue with a fresh delivery count."""
    for job in list_dead(app):
        if job.id != job_id:
            continue
        with app.connection_for_write() as conn:
            if not conn.default_channel.client.lrem(DEAD_LETTER_QUEUE, 1, job.raw):
                return None  # someone else requeued it first
        reset_deliveries(app, job.id)
        app.backend.forget(job.id)
        app.send_task(job.task, kwargs=job.kwargs, task_id=job.id)  # routed by task name
        return job
    return None
