"""What a plain Celery task does around its run that celery-batches leaves out.

Consumer side: ``simple_request`` keeps a request's ``callbacks``, ``errbacks``, ``chain`` and
``chord`` (celery-batches drops them with the message body's embed, so a batched task never
triggered the next task of a chain: celery-batches #26), ``due_at`` reads its ETA on the
wall clock. Child side: ``store_success`` and ``store_failure`` store a request's end the way
Celery's tracer does for a plain task: the next task of its chain and its ``link``
callbacks are sent with the result, its ``link_error`` callbacks and the rest of its chain
learn of a failure, a chord counts the part.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from celery import Celery, signature
from celery.app.task import Context
from celery.backends.redis import RedisBackend
from celery.worker.request import Request
from celery_batches import SimpleRequest

from worker.results import ResultStore


def simple_request(request: Request) -> SimpleRequest:
    """What the pool child gets of ``request``: its message's headers *and* its embed."""
    args, kwargs, embed = request._payload
    context = {**request.request_dict, **(embed or {})}
    return SimpleRequest(
        request.id,
        request.name,
        args,
        kwargs,
        request.delivery_info,
        request.hostname,
        bool(getattr(request, "ignore_result", False)),
        request.reply_to,
        request.correlation_id,
        context,
    )


def due_at(request: Request, app_tz: dt.tzinfo) -> float | None:
    """Wall-clock time ``request`` may run from (0.0: now), None when its ETA is no time.

    A naive ETA is UTC when the message says so, else the app's timezone (as Celery's own
    strategy reads it).
    """
    eta = request.eta
    if eta is None:
        return 0.0
    try:
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=dt.UTC if request.utc else app_tz)
        return float(eta.timestamp())
    except (OverflowError, ValueError, OSError, AttributeError):
        return None


def context_of(request: SimpleRequest) -> Context:
    """The request as Celery's backend reads one (chord, chain, errbacks, ids)."""
    context = Context(dict(request.request_dict or {}))
    context.id = request.id
    return context


def store_success(app: Celery, request: SimpleRequest, result: dict[str, Any]) -> None:
    """Send what follows ``request`` in its chain and links, then store its result."""
    context = context_of(request)
    send_followups(app, request.id, context, result)
    app.backend.mark_as_done(request.id, result, request=context)


def store_successes(app: Celery, ended: Sequence[tuple[SimpleRequest, dict[str, Any]]]) -> None:
    """``store_success`` for a batch's requests: what follows each is sent, then the results
    are stored together (``ResultStore.successes``: two round trips, not two per request).
    A chord's part goes alone (``mark_as_done`` counts it), and so does everything when the
    result backend is not Redis."""
    together: list[tuple[Context, dict[str, Any]]] = []
    for request, result in ended:
        context = context_of(request)
        if context.chord or not isinstance(app.backend, RedisBackend):
            store_success(app, request, result)
            continue
        send_followups(app, request.id, context, result)
        together.append((context, result))
    ResultStore(app.backend).successes(together)


def send_followups(app: Celery, job_id: str, context: Context, result: dict[str, Any]) -> None:
    """The ``link`` callbacks and the next task of the chain of a job that succeeded."""
    inherit = app.conf.task_inherit_parent_priority
    priority = (context.delivery_info or {}).get("priority") if inherit else None
    ids = {"parent_id": job_id, "root_id": context.root_id or job_id}
    for callback in context.callbacks or ():
        signature(callback, app=app).apply_async((result,), priority=priority, **ids)
    chain = list(context.chain or ())
    if chain:
        following = signature(chain.pop(), app=app)
        following.apply_async((result,), chain=chain, priority=priority, **ids)


def store_failure(app: Celery, request: SimpleRequest, exc: BaseException, tb: str) -> None:
    """Store the failure; the rest of the chain fails with it, ``link_error`` hears of it."""
    context = context_of(request)
    app.backend.mark_as_failure(request.id, exc, traceback=tb, request=context)
