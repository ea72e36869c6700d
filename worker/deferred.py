"""Jobs finished later: a ``Deferred`` job's message is acked without a result, and
``resume`` sends the job again, under the same id, when the jobs it started are done.

``keep`` stores what the job was sent with (task, kwargs with its ``callback_url``, queue,
priority, and what follows it: links, error links, the rest of its chain) in
``mlworker:deferred:<id>``; ``resume`` sends that message once more with a few kwargs
added. The resumed run is an ordinary delivery: admission, its own events, its result
stored under the job's id, its chain continued and its callback recorded as for any job.
A job revoked meanwhile is dropped by the worker that gets its resumed message.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery

from worker.admission import Ticket

KEY = "mlworker:deferred:{}"


def keep(client: Any, ticket: Ticket, ttl_s: int) -> None:
    """Remember how to send ``ticket``'s job again (for ``ttl_s`` seconds)."""
    body = {
        "task": ticket.task,
        "kwargs": ticket.kwargs,
        "queue": ticket.queue,
        "priority": ticket.priority,
        "followups": ticket.followups,
    }
    client.set(KEY.format(ticket.id), json.dumps(body), ex=max(1, ttl_s))


def resume(app: Celery, job_id: str, extra_kwargs: dict[str, Any]) -> bool:
    """Send job ``job_id`` again with ``extra_kwargs`` added; False when nothing is kept
    (expired, or resumed already: the record is taken once)."""
    pipe = app.backend.client.pipeline(transaction=True)
    pipe.get(KEY.format(job_id))
    pipe.delete(KEY.format(job_id))
    raw, taken = pipe.execute()
    if raw is None or not taken:
        return False
    body = json.loads(raw)
    follow = body.get("followups") or {}
    options: dict[str, Any] = {}
    if follow.get("chain"):
        options["chain"] = follow["chain"]
    app.send_task(
        body["task"],
        kwargs={**body["kwargs"], **extra_kwargs},
        task_id=job_id,
        queue=body.get("queue"),
        priority=body.get("priority"),
        link=follow.get("callbacks") or None,
        link_error=follow.get("errbacks") or None,
        root_id=follow.get("root_id"),
        parent_id=follow.get("parent_id"),
        **options,
    )
    return True
