"""``IsolatedBatches``: the thin shell over celery-batches' ``Batches``.

Consumer side (the worker's main process): a flush timer per consumer, the idle rule of
``worker.batching.rules``, and callbacks for a batch whose child dies or times out. Child
side: the flushed requests become tickets for ``worker.execution.Executor``, and each
request's outcome is stored as its own result, with its own Flower events (the consumer's
buffer sends each request's ``task-received``: see ``worker.batching.events``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection
from typing import Any, ClassVar

import redis
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from config import get_settings
from worker.admission import Ticket
from worker.batching.events import ReceivedBuffer, RequestEvents
from worker.batching.rules import BufferState, should_flush, starts_at_once, tick_s
from worker.errors import JobError
from worker.execution import Executor
from worker.handler import Handler
from worker.results import ResultStore

log = logging.getLogger(__name__)

#: errors that mean Redis went away mid-batch: the unsettled requests are delivered again
BROKER_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


class IsolatedBatches(Batches):  # type: ignore[misc]
    """A batched task whose requests each get their own stored result or failure.

    The runtime builds one subclass per batched ``TaskSpec`` and sets ``name``,
    ``handler``, ``family``, ``flush_every``, ``flush_interval`` and ``flush_idle_s``.
    """

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    typing = False

    handler: ClassVar[Handler[Any]]
    family: ClassVar[str] = ""
    #: 0: celery-batches' plain periodic timer; see ``worker.batching.rules``
    flush_idle_s: float = 0.0
    _first_arrival: float | None = None
    _last_arrival: float = 0.0
    #: batches handed to the pool and not yet returned (consumer process only)
    _in_flight: int = 0
    _executor: Executor[Any] | None = None

    # --- consumer process -------------------------------------------------------------

    def __init__(self) -> None:
        super().__init__()
        self._buffer = ReceivedBuffer()  # celery-batches' buffer, sending task-received

    def _tick_s(self) -> float:
        return tick_s(idle_s=self.flush_idle_s, interval_s=float(self.flush_interval))

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 - Celery's name
        """Rebuilt on every consumer (re)start; give the new consumer its own flush timer.

        celery-batches keeps ``_tref`` from the consumer that died with the broker
        connection, so after a reconnect it never starts a timer again and a partial buffer
        waits for a full one (celery-batches #99/#107). The handler notes arrival times for
        the idle rule and runs the timer at ``_tick_s``.
        """
        stale = getattr(self, "_tref", None)
        if stale is not None:
            stale.cancel()
        self._tref = None
        strategy = super().Strategy(task, app, consumer)
        if self._buffer.qsize() or self._pending.qsize():
            self._tref = consumer.timer.call_repeatedly(self._tick_s(), self._do_flush)

        def handler(*args: Any, **kwargs: Any) -> None:
            now = time.monotonic()
            if self._first_arrival is None:
                self._first_arrival = now
            self._last_arrival = now
            started_timer = self._tref is None
            strategy(*args, **kwargs)  # buffers the request; starts the timer, flushes if full
            if started_timer and self._tref is not None and self.flush_idle_s > 0:
                self._tref.cancel()
                self._tref = consumer.timer.call_repeatedly(self._tick_s(), self._do_flush)
            if starts_at_once(self._state(), idle_s=self.flush_idle_s):
                self._flush_buffer()

        return handler

    def _do_flush(self) -> None:
        """celery-batches' flush, when the flush rule says so."""
        now = time.monotonic()
        if not should_flush(
            self._state(), now, idle_s=self.flush_idle_s, interval_s=float(self.flush_interval)
        ):
            return
        self._flush_buffer()

    def _flush_buffer(self) -> None:
        """celery-batches' flush of everything buffered; the next arrival starts a new wait."""
        self._first_arrival = None
        super()._do_flush()

    def _state(self) -> BufferState:
        return BufferState(
            buffered=self._buffer.qsize(),
            batch_size=int(self.flush_every),
            first_arrival=self._first_arrival,
            last_arrival=self._last_arrival,
            in_flight=self._in_flight,
            children=int(getattr(self._pool, "num_processes", 1) or 1),
        )

    def flush(self, requests: Collection[Request]) -> Any:
        """celery-batches' flush plus what happens when the child dies or times out.

        celery-batches passes no ``error_callback``, so a batch whose child is killed (OOM,
        segfault, kill -9) is neither acked nor rejected: its messages sit unacked until
        the visibility timeout. With ``reject_on_worker_lost`` they go back to the queue at
        once, as a plain task's message does.
        """
        late = [r for r in requests if r.task.acks_late]
        early = [r for r in requests if not r.task.acks_late]
        simple = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for request in early:
                request.acknowledge()

        def on_return(result: Any) -> None:
            self._in_flight -= 1
            settled = set(result) if isinstance(result, list) else set()
            for request in late:
                if request.id in settled:
                    request.acknowledge()
                else:  # its end was not recorded (see ``run``): deliver it again
                    request.reject(requeue=True)

        def on_error(einfo: Any) -> None:
            self._in_flight -= 1
            exc = getattr(einfo, "exception", einfo)
            exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback wrapper
            if isinstance(exc, WorkerLostError) and self.reject_on_worker_lost:
                log.warning("batch of %d lost its child (%s); requeued", len(late), exc)
                for request in late:
                    request.reject(requeue=True)
                return
            for request in late:
                self.backend.mark_as_failure(request.id, exc, request=None)
                request.acknowledge()

        self._in_flight += 1
        try:
            return self._pool.apply_async(
                apply_batches_task,
                (self, simple, 0, None),
                accept_callback=on_accepted,
                callback=on_return,
                error_callback=on_error,
                # celery-batches passes no limits: the task's time limits apply to the batch
                timeout=self.time_limit,
                soft_timeout=self.soft_time_limit,
            )
        except BaseException:
            self._in_flight -= 1
            raise

    # --- pool child -------------------------------------------------------------------

    @property
    def executor(self) -> Executor[Any]:
        if self._executor is None:  # built in the child, whose memory guard must read
            self._executor = Executor(self.app, self.handler, get_settings(), batched=True)
        return self._executor

    def run(self, requests: list[SimpleRequest]) -> list[str]:  # type: ignore[override]
        """celery-batches calls this in the pool child with the flushed requests.

        Returns the ids whose end is recorded (a stored result or failure, a requeue, a
        skip); the consumer acks those and puts the rest back on the queue. celery-batches
        swallows an exception from here and acks the whole batch, so a batch cut short by
        a lost Redis connection would be acked with results missing: instead the ids not
        settled go back, and any other error becomes each unsettled request's failure.
        A request delivered twice into one flush (a redelivery racing a reconnect) runs
        once.
        """
        events = RequestEvents(
            self.app, [r.id for r in requests], requests[0].hostname if requests else None
        )
        sink = _StoreEach(self, events)
        unique: dict[str, Ticket] = {}
        for request in requests:
            unique.setdefault(request.id, _ticket(self.name, request))
        tickets = list(unique.values())
        try:
            self.executor.execute(tickets, int(self.flush_every), sink)
        except BROKER_DOWN as exc:
            log.warning("batch cut short (%r): %d of %d requests go back to the queue",
                        exc, len(tickets) - len(sink.settled), len(tickets))  # fmt: skip
        except Exception as exc:
            log.error("batch failed outside its requests: %r", exc, exc_info=exc)
            for ticket in tickets:
                if ticket.id not in sink.settled:
                    with contextlib.suppress(*BROKER_DOWN):
                        sink.failure(ticket, exc)
        finally:
            events.close()
        return sorted(sink.settled)


def _ticket(task_name: str, request: SimpleRequest) -> Ticket:
    return Ticket(
        id=request.id,
        task=task_name,
        kwargs=dict(request.kwargs or {}),
        args=tuple(request.args or ()),
        retries=int((request.request_dict or {}).get("retries") or 0),
        queue=(request.delivery_info or {}).get("routing_key"),
    )


class _StoreEach:
    """Sink of a batch: each request's own result or failure, and its Flower event."""

    def __init__(self, task: IsolatedBatches, events: RequestEvents) -> None:
        self.store = ResultStore(task.backend)
        self.events = events
        #: ids whose end is recorded: their messages may be acked
        self.settled: set[str] = set()

    def success(self, ticket: Ticket, result: dict[str, Any]) -> None:
        self.store.success(ticket.id, result)
        self.settled.add(ticket.id)
        self.events.succeeded(ticket.id, result)

    def failure(self, ticket: Ticket, exc: BaseException) -> None:
        if not isinstance(exc, JobError):
            log.error("request %s failed: %r", ticket.id, exc, exc_info=exc)
        tb = self.store.failure(ticket.id, exc)
        self.settled.add(ticket.id)
        self.events.failed(ticket.id, exc, tb)

    def requeued(self, ticket: Ticket) -> None:
        self.settled.add(ticket.id)

    def skipped(self, ticket: Ticket) -> None:
        self.settled.add(ticket.id)
