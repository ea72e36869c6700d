"""Flower events for each request of a batch, so Flower shows requests, not one batch.

celery-batches buffers a request without the ``task-received`` event Celery's strategy
sends for a plain task (it sends the ``task_received`` signal only), and runs a batch as one
task execution: the worker sends events for the batch task only. Here the consumer's
``ReceivedBuffer`` sends ``task-received`` (name, redacted args and kwargs, retries, eta,
ids) as a request is buffered, and a ``RequestEvents`` per batch, in the pool child, sends
``task-started`` for each request when the batch starts and ``task-succeeded`` (with its
runtime) or ``task-failed`` as each request's outcome is stored, the events of one moment
in one message.
Monitoring never fails a job: every error here is logged at debug level and dropped.
"""

from __future__ import annotations

import logging
import reprlib
import time
from collections.abc import Sequence
from queue import Queue
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr

log = logging.getLogger(__name__)

#: a longer string is a payload (a ``text``, an ``audio_b64``), not a label: Flower shows its head
SHOWN_STR_CHARS = 200
#: bound on one args, kwargs or result repr in an event: enough to read, never a payload
SHOWN_REPR_CHARS = 2000
#: items of one list or dict, and levels of nesting, shown before reprlib's "..."
SHOWN_ITEMS = 32
SHOWN_LEVELS = 4
#: events held before the dispatcher publishes them anyway (one batch's are flushed sooner)
BUFFERED_EVENTS = 256


class _Redacting(reprlib.Repr):
    """``repr`` with each long string cut to its head and its length."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = SHOWN_LEVELS
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = SHOWN_ITEMS
        self.maxother = SHOWN_STR_CHARS

    def repr_str(self, x: str, level: int) -> str:
        if len(x) <= SHOWN_STR_CHARS:
            return repr(x)
        return repr(f"{x[:SHOWN_STR_CHARS]}…({len(x)} chars)")


_REDACTING = _Redacting()


def _bounded(text: str) -> str:
    if len(text) <= SHOWN_REPR_CHARS:
        return text
    return f"{text[:SHOWN_REPR_CHARS]}…({len(text)} chars)"


def shown(value: Any, header: Any, default_maxsize: int) -> str:
    """What an event shows of a request's args or kwargs.

    The client's ``argsrepr``/``kwargsrepr`` header where the client chose it (Celery's way
    to hide a secret from monitors); else ``value`` with long strings cut. A header equal to
    Celery's default ``saferepr(value, default_maxsize)`` holds up to that many characters of
    the payload itself, so it is redacted like a missing one.
    """
    if isinstance(header, str) and header:
        defaults = {saferepr(value, default_maxsize)}
        if isinstance(value, list):  # a client's tuple arrives as a JSON list
            defaults.add(saferepr(tuple(value), default_maxsize))
        if header not in defaults:
            return _bounded(header)
    if isinstance(value, list):  # shown as the client's task-sent shows it: "()", not "[]"
        value = tuple(value)
    return _bounded(_REDACTING.repr(value))


def received_fields(request: Any) -> dict[str, Any]:
    """The fields Celery's strategy sends with ``task-received`` for a plain task, args and
    kwargs redacted, for a celery ``Request`` that celery-batches buffers."""
    amqp = request.task.app.amqp
    eta, expires = request.eta, request.expires
    return {
        "name": request.name,
        "args": shown(request.args, request.argsrepr, amqp.argsrepr_maxsize),
        "kwargs": shown(request.kwargs, request.kwargsrepr, amqp.kwargsrepr_maxsize),
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "retries": (request.request_dict or {}).get("retries", 0),
        "eta": eta.isoformat() if eta else None,
        "expires": expires.isoformat() if expires else None,
    }


class ReceivedBuffer(Queue[Any]):
    """celery-batches' buffer of requests, sending ``task-received`` for each one put in it
    through the consumer's event dispatcher (``Request.send_event``: a no-op when task events
    are off), so Flower learns its name, arguments and time of arrival."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            item.send_event("task-received", **received_fields(item))
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("task-received for %s not sent: %r", getattr(item, "id", item), exc)
        super().put(item, block, timeout)


class RequestEvents:
    """One event dispatcher for one batch's requests (a no-op when events are off).

    Built in the pool child as the batch starts: its events carry the child's pid, and each
    request's ``runtime`` is the seconds from the batch's start to that request's outcome.
    The events of a moment go out as one ``task-multi`` message (Celery's buffered
    dispatcher; its ``EventReceiver``, and so Flower, reads each event of the list): the
    batch's ``task-started`` together, then the ``task-succeeded`` of each model call's
    successes together, instead of one publish per request.
    """

    def __init__(self, app: Celery, job_ids: Sequence[str], hostname: str | None) -> None:
        self.dispatcher: Any = None
        self.started = time.monotonic()
        if not app.conf.worker_send_task_events or not job_ids:
            return
        try:
            self.dispatcher = app.events.Dispatcher(
                app.connection_for_write(),
                hostname=hostname,
                buffer_group=["task"],
                buffer_limit=BUFFERED_EVENTS,
            )
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("no event dispatcher: %r", exc)
            return
        for job_id in job_ids:
            self.send(job_id, "task-started")
        self.flush()

    def succeeded(self, ended: Sequence[tuple[str, Any]]) -> None:
        """``task-succeeded`` for each (job id, result), sent together."""
        runtime = time.monotonic() - self.started
        for job_id, result in ended:
            self.send(
                job_id,
                "task-succeeded",
                result=saferepr(result, SHOWN_REPR_CHARS),
                runtime=runtime,
            )
        self.flush()

    def failed(self, job_id: str, exc: BaseException, traceback: str) -> None:
        self.send(job_id, "task-failed", exception=repr(exc)[:512], traceback=traceback[-2000:])
        self.flush()

    def send(self, job_id: str, kind: str, **fields: Any) -> None:
        if self.dispatcher is None:
            return
        try:
            self.dispatcher.send(kind, uuid=job_id, **fields)
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("event %s for %s not sent: %r", kind, job_id, exc)

    def flush(self) -> None:
        """Publish the buffered events (one message)."""
        if self.dispatcher is None:
            return
        try:
            self.dispatcher.flush()
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("events not sent: %r", exc)

    def close(self) -> None:
        if self.dispatcher is not None:
            self.flush()
            self.dispatcher.close()
            self.dispatcher = None
