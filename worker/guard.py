"""The worker side of ``worker.protocol``: no message's content can stop a worker.

Two layers, both installed by the worker entry (so ``celery -A worker.app:app worker`` and
``mlworker worker`` get them alike; clients keep kombu's own transport):

- ``GuardedTransport``: kombu's redis transport, whose channel drops an item that is not
  JSON at all (logged; no id can be read from it) and marks an envelope kombu cannot turn
  into a message, instead of raising in the worker's event loop;
- ``GuardedConsumer``: Celery's consumer, which screens every task message with
  ``worker.protocol.message_problem`` before Celery's strategy (plain or celery-batches)
  sees it, and keeps any error of that strategy from reaching the event loop.

A refused message is rejected without requeue; where its id can be read, its result becomes
an ``InvalidInput`` failure naming the field (unless a result is already stored) and it is
parked on the dead-letter queue with the reason, for ``mlworker dead`` to show.
"""

from __future__ import annotations

import logging
import uuid
from queue import Empty
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis

from config import get_settings
from worker.delivery import dead_letter
from worker.errors import InvalidInput
from worker.families import load_families
from worker.family import Families
from worker.protocol import (
    Refusal,
    decoded_kwargs,
    envelope_problem,
    message_problem,
    raw_excerpt,
    readable_id,
    served_by,
)

log = logging.getLogger(__name__)

#: property set by the transport on an envelope it had to rebuild; the consumer refuses it
REFUSED_PROPERTY = "x-mlworker-refused"
#: what the dead-letter record keeps of a refused message, for an operator to look at
EXCERPT_CHARS = 2000


class GuardedChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's redis channel that survives items it cannot decode."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers["BRPOP"] = self._guarded_brpop_read

    def _guarded_brpop_read(self, **options: Any) -> bool:
        try:
            return bool(self._brpop_read(**options))
        except (ValueError, RecursionError) as exc:  # JSON decode of the raw item
            log.error("dropped a queue item that is not a JSON message: %r", exc)
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)
        except (ValueError, RecursionError) as exc:
            log.error("dropped an item of queue %s that is not a JSON message: %r", queue, exc)
            raise Empty() from None


class GuardedTransport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's redis transport whose deliveries are screened for a sound envelope."""

    Channel = GuardedChannel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is None:
            super()._deliver(message, queue)
            return
        job_id, task = readable_id(message)
        if job_id is None:
            log.error("dropped a malformed message on %s (%s): %s", queue, problem,
                      raw_excerpt(message, 300))  # fmt: skip
            return
        # keep the readable id: the consumer refuses it with a record of why
        headers = message.get("headers") if isinstance(message, dict) else None
        rebuilt = {
            "body": "",
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": headers,
            "properties": {
                "delivery_tag": str(uuid.uuid4()),
                "delivery_info": {"exchange": "", "routing_key": queue},
                REFUSED_PROPERTY: problem,
            },
        }
        super()._deliver(rebuilt, queue)


class GuardedConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer with every task message screened before its strategy runs."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        inner = super().create_task_handler(*args, **kwargs)
        served = served_by(self.app.tasks)
        families = load_families(get_settings())

        def handle(message: Any) -> None:
            refusal = _screen(message, served)
            if refusal is not None and refusal.unserved:
                refusal = self.pass_on(message, refusal, families)
                if refusal is None:
                    return
            if refusal is not None:
                self.refuse(message, refusal)
                return
            inner(message)

        def on_task_received(message: Any) -> None:
            try:
                handle(message)
            except self.connection_errors:
                raise  # the consumer reconnects; the unacked message is delivered again
            except Exception as exc:  # noqa: BLE001 - a message must never stop the worker
                job_id, task = _ids(message)
                self.refuse(message, Refusal("message", f"could not be handled: {exc!r}",
                                             job_id, task))  # fmt: skip

        return on_task_received

    def pass_on(self, message: Any, refusal: Refusal, families: Families) -> Refusal | None:
        """Send a job that arrived outside its family's queue (a client without mlworker's
        routes uses Celery's default queue) on to that queue, unchanged; ``None`` once it
        is on its way, else why it stays refused."""
        arrived = (getattr(message, "delivery_info", None) or {}).get("routing_key")
        family = families.of_task(refusal.task or "")
        if family is None:
            return Refusal("task", f"{refusal.task} is not a task of any mlworker family",
                           refusal.job_id, refusal.task)  # fmt: skip
        if arrived in families.queues:  # sent to another family's queue on purpose
            return Refusal("task", f"{refusal.task} belongs on queue {family.queue}, "
                           f"not {arrived}", refusal.job_id, refusal.task)  # fmt: skip
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",  # the default exchange: straight to the queue of that name
                routing_key=family.queue,
                declare=[self.app.amqp.queues[family.queue]],
                headers=dict(message.headers),
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                serializer=None,
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"),
                priority=message.properties.get("priority"),
                retry=True,
            )
        message.ack_log_error(log, self.connection_errors)
        log.info("passed job %s (%s) from queue %s on to %s", refusal.job_id, refusal.task,
                 arrived, family.queue)  # fmt: skip
        return None

    def refuse(self, message: Any, refusal: Refusal) -> None:
        """Reject ``message`` for good and record why where its id is known."""
        log.error("refused message id=%s task=%s: %s", refusal.job_id, refusal.task, refusal)
        try:
            message.reject_log_error(log, self.connection_errors, requeue=False)
        except Exception:  # noqa: BLE001 - an unackable message is gone with its channel
            log.exception("could not reject refused message %s", refusal.job_id)
        if refusal.job_id is not None:
            record_refusal(self.app, message, refusal)


def _screen(message: Any, served: Any) -> Refusal | None:
    properties = getattr(message, "properties", None) or {}
    rebuilt = properties.get(REFUSED_PROPERTY) if isinstance(properties, dict) else None
    if rebuilt:
        job_id, task = _ids(message)
        field, _, problem = str(rebuilt).partition(": ")
        return Refusal(field or "message", problem or str(rebuilt), job_id, task)
    return message_problem(message.headers, message.decode, served)


def _ids(message: Any) -> tuple[str | None, str | None]:
    return readable_id({"headers": getattr(message, "headers", None)})


def record_refusal(app: Celery, message: Any, refusal: Refusal) -> None:
    """The refused job's failure (if nothing is stored yet) and its dead-letter record."""
    assert refusal.job_id is not None
    reason = f"refused: {refusal}"
    try:
        if app.backend.get_task_meta(refusal.job_id).get("status") == "PENDING":
            app.backend.mark_as_failure(refusal.job_id, InvalidInput(refusal.field, reason))
        kwargs = decoded_kwargs(message.decode)
        dead_letter(app, refusal.task or "unknown", refusal.job_id, kwargs, reason,
                    excerpt=raw_excerpt(getattr(message, "body", b""), EXCERPT_CHARS))  # fmt: skip
    except Exception:  # noqa: BLE001 - recording is best effort; the refusal stands
        log.exception("could not record refused message %s", refusal.job_id)
