"""``IsolatedBatches``: the thin shell over celery-batches' ``Batches``.

Consumer side (the worker's main process): a flush timer per consumer, the idle rule of
``worker.batching.rules``, and callbacks for a batch whose child dies or times out. Child
side: the flushed requests become tickets for ``worker.execution.Executor``, and each
request's outcome is stored as its own result, with its own Flower events (the consumer's
buffer sends each request's ``task-received``: see ``worker.batching.events``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import traceback
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from billiard.exceptions import WorkerLostError
from celery.worker import state as worker_state
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from config import get_settings
from worker.admission import Ticket
from worker.batching.events import ReceivedBuffer, RequestEvents
from worker.batching.followups import due_at, simple_request, store_failure, store_successes
from worker.batching.rules import (
    REFILL_WAIT_S,
    BufferState,
    fills_a_batch,
    keeps_refilling,
    pick_batch,
    priority_of,
    should_flush,
    starts_at_once,
    tick_s,
)
from worker.errors import JobError
from worker.execution import Executor
from worker.handler import Handler
from worker.recovery import BROKER_DOWN

log = logging.getLogger(__name__)

#: past a batch's hard time limit, how long before its handle no longer counts as running
HANDLE_GRACE_S = 30.0


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
    #: previous result -> kwargs (``TaskSpec.chain_input``); None: positional args refused
    chain_input: ClassVar[Any] = None  # a staticmethod(ChainInput) set by worker.entry
    #: 0: celery-batches' plain periodic timer; see ``worker.batching.rules``
    flush_idle_s: float = 0.0
    _first_arrival: float | None = None
    _last_arrival: float = 0.0
    _executor: Executor[Any] | None = None

    # --- consumer process -------------------------------------------------------------

    def __init__(self) -> None:
        super().__init__()
        self._buffer = ReceivedBuffer()  # celery-batches' buffer, sending task-received
        #: due requests waiting for a free child, in arrival order (consumer process only)
        self._ready: list[Request] = []
        #: the pool's handles of the batches running now, with when each was sent
        self._handles: list[tuple[Any, float]] = []
        #: a batch came back while a full one waited: the next batch is held until this
        #: monotonic time, pushed on while the messages fetched since the acks are more
        #: urgent than it (``keeps_refilling``); None: not held
        self._refill_until: float | None = None
        # celery-batches flushes on every ``flush_every``-th arrival, whatever has been
        # dispatched since; disarmed: the handler's ``fills_a_batch`` decides instead
        self._count = itertools.repeat(1)

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
        # a batch sent before the broker went away may never call back: forget the old
        # consumer's handles rather than count a child busy forever (the worst is one
        # batch queued in the pool behind a running one)
        self._handles = []
        self._refill_until = None
        strategy = super().Strategy(task, app, consumer)
        if self._ready or self._buffer.qsize() or self._pending.qsize():
            self._tref = consumer.timer.call_repeatedly(self._tick_s(), self._do_flush)

        def handler(*args: Any, **kwargs: Any) -> None:
            now = time.monotonic()
            if self._first_arrival is None:
                self._first_arrival = now
            self._last_arrival = now
            started_timer = self._tref is None
            if self._refill_until is None:
                strategy(*args, **kwargs)  # buffers it; starts the timer, flushes if full
            else:  # fetched since a batch's acks: the most urgent message in Redis
                self._collect()
                waiting = [priority_of(r.delivery_info.get("priority")) for r in self._ready]
                strategy(*args, **kwargs)
                arrived = priority_of(getattr(args[0], "properties", {}).get("priority"))
                more = keeps_refilling(waiting, arrived, int(self.flush_every))
                self._refill_until = now + REFILL_WAIT_S if more else None
            if started_timer and self._tref is not None and self.flush_idle_s > 0:
                self._tref.cancel()
                self._tref = consumer.timer.call_repeatedly(self._tick_s(), self._do_flush)
            state = self._state()
            if starts_at_once(state, idle_s=self.flush_idle_s):
                self._flush_buffer()
            elif fills_a_batch(state):
                self._collect()
                self._dispatch(full_only=True)

        return handler

    def _do_flush(self) -> None:
        """Timer tick (and celery-batches' count trigger): sort what arrived, then dispatch
        when the flush rule says so."""
        self._collect()
        now = time.monotonic()
        if self._ready and should_flush(
            self._state(), now, idle_s=self.flush_idle_s, interval_s=float(self.flush_interval)
        ):
            self._dispatch()
        self._stop_idle_timer()

    def _flush_buffer(self) -> None:
        """Dispatch whatever is ready now; the next arrival starts a new wait."""
        self._collect()
        self._dispatch()
        self._stop_idle_timer()

    def _next_full_batch(self) -> None:
        """A batch came back: a full batch waiting starts once the messages fetched since
        hold none more urgent than it (``keeps_refilling``), or ``REFILL_WAIT_S`` after the
        last one when none comes; a partial one waits for the flush rule's next tick (so a
        batch that came back mid-send does not cut the arrivals behind it short).

        The acks just freed the prefetch window and the worker fetches the most urgent
        Redis list first: urgent requests sent behind a backlog go into the very next batch
        instead of the one after it.
        """
        self._collect()
        if len(self._ready) >= int(self.flush_every):
            self._refill_until = time.monotonic() + REFILL_WAIT_S
        self._dispatch(full_only=True)
        self._stop_idle_timer()

    def _collect(self) -> None:
        """Take the buffer in; drop the revoked; hold back what waits for its ETA.

        Replaces celery-batches' sorting, which never asks ``Request.revoked()`` (a revoked
        request ran anyway) and compares an ETA's wall-clock timestamp with the monotonic
        clock (a countdown never fell due). ``revoked()`` is Celery's own: it marks the job
        REVOKED, acks its message, sends ``task-revoked`` and the ``task_revoked`` signal.
        """
        waiting = [*self._ready, *_drain(self._buffer), *_drain(self._pending)]
        self._ready = []
        wall = time.time()
        for request in waiting:
            parent = _parent_of(request)
            if parent and parent in worker_state.revoked:
                # the job it was started for is revoked: so is it, and the job ends REVOKED
                # here (its own message was acked when it handed its work out)
                worker_state.revoked.add(request.id)
                with contextlib.suppress(*BROKER_DOWN):
                    self.backend.mark_as_revoked(parent, reason="revoked")
            if request.revoked():
                continue
            due = due_at(request, self.app.timezone)
            if due is None:
                request.reject(requeue=False)  # an ETA that is no time: never runnable
            elif due <= wall:
                self._ready.append(request)
            else:
                self._pending.put(request)
        if self._ready and self._first_arrival is None:
            # fell due from the ETA queue: the interval cap counts its wait from now
            self._first_arrival = time.monotonic()

    def _dispatch(self, *, full_only: bool = False) -> None:
        """Hand the ready requests to free children as batches of at most ``flush_every``,
        the most urgent first; ``full_only`` keeps a partial remainder for the next tick.

        A batch goes to the pool only when a child is free to start it: a batch queued in
        the pool could no longer take a more urgent request that arrives meanwhile. Handles
        never stall the queue: they are dropped once their batch is past its time limit,
        and when the consumer restarts.
        """
        size = int(self.flush_every)
        if self._refill_until is not None:
            if time.monotonic() < self._refill_until:
                return
            self._refill_until = None
        while (
            self._ready
            and (len(self._ready) >= size or not full_only)
            and self._running() < self._children()
        ):
            priorities = [priority_of(r.delivery_info.get("priority")) for r in self._ready]
            chosen = pick_batch(priorities, size)
            alone = [i for i in chosen if _parent_of(self._ready[i])]
            if alone:  # a long recording's chunk: one per child, so the chunks spread
                chosen = alone[:1]
            batch = [self._ready[i] for i in chosen]
            taken = set(chosen)
            self._ready = [r for i, r in enumerate(self._ready) if i not in taken]
            self._first_arrival = time.monotonic() if self._ready else None
            self.flush(batch)

    def _stop_idle_timer(self) -> None:
        """No request anywhere: stop ticking until the next arrival starts the timer."""
        if self._ready or self._buffer.qsize() or self._pending.qsize():
            return
        if self._tref is not None:
            self._tref.cancel()
        self._tref = None
        self._first_arrival = None

    def _running(self) -> int:
        """Batches handed to the pool whose result has not come back (nor could still:
        past the hard time limit, with a margin for the pool to notice, it is not counted)."""
        limit = float(self.time_limit) + HANDLE_GRACE_S if self.time_limit else None
        now = time.monotonic()
        self._handles = [
            (handle, sent)
            for handle, sent in self._handles
            if not handle.ready() and (limit is None or now - sent < limit)
        ]
        return len(self._handles)

    def _children(self) -> int:
        return max(1, int(getattr(self._pool, "num_processes", 1) or 1))

    def _state(self) -> BufferState:
        return BufferState(
            buffered=self._buffer.qsize() + len(self._ready),
            batch_size=int(self.flush_every),
            first_arrival=self._first_arrival,
            last_arrival=self._last_arrival,
            in_flight=self._running(),
            children=self._children(),
        )

    def flush(self, requests: Collection[Request]) -> Any:
        """celery-batches' flush plus what happens when the child dies or times out.

        celery-batches passes no ``error_callback``, so a batch whose child is killed (OOM,
        segfault, kill -9) is neither acked nor rejected: its messages sit unacked until
        the visibility timeout. With ``reject_on_worker_lost`` they go back to the queue at
        once, as a plain task's message does. When a batch comes back the consumer looks
        at once for a full batch waiting (``_next_full_batch``): it does not wait for a tick.
        """
        late = [r for r in requests if r.task.acks_late]
        early = [r for r in requests if not r.task.acks_late]
        simple = ([simple_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            started = time.time() - (time.monotonic() - time_accepted)
            for request in requests:
                # what revoke(terminate=True) looks for: the request, its child, its start
                request.worker_pid, request.time_start = pid, started
                worker_state.task_accepted(request)
            for request in early:
                request.acknowledge()

        def on_return(result: Any) -> None:
            self._returned(requests, late, result)

        def on_error(einfo: Any) -> None:
            self._failed(requests, late, einfo)

        handle = self._pool.apply_async(
            apply_batches_task,
            (self, simple, 0, None),
            accept_callback=on_accepted,
            callback=on_return,
            error_callback=on_error,
            # celery-batches passes no limits: the task's time limits apply to the batch
            timeout=self.time_limit,
            soft_timeout=self.soft_time_limit,
        )
        if handle is not None:
            self._handles.append((handle, time.monotonic()))
        return handle

    def _returned(self, requests: Collection[Request], late: list[Request], result: Any) -> None:
        """Ack what the child settled, deliver the rest again, look for the next batch."""
        _ended(requests)
        settled = set(result) if isinstance(result, list) else set()
        for request in late:
            if request.acknowledged:  # revoked and terminated meanwhile
                continue
            if request.id in settled:
                request.acknowledge()
            else:  # its end was not recorded (see ``run``): deliver it again
                request.reject(requeue=True)
        self._next_full_batch()

    def _failed(self, requests: Collection[Request], late: list[Request], einfo: Any) -> None:
        """The child died (requeue) or the pool failed the batch (store the failure)."""
        _ended(requests)
        open_ = [r for r in late if not r.acknowledged]  # a terminated one is acked already
        exc = getattr(einfo, "exception", einfo)
        exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback wrapper
        if isinstance(exc, WorkerLostError) and self.reject_on_worker_lost:
            log.warning("batch of %d lost its child (%s); requeued", len(open_), exc)
            for request in open_:
                request.reject(requeue=True)
        else:
            for request in open_:
                self.backend.mark_as_failure(request.id, exc, request=None)
                request.acknowledge()
        self._next_full_batch()

    # --- pool child -------------------------------------------------------------------

    @property
    def executor(self) -> Executor[Any]:
        if self._executor is None:  # built in the child, whose memory guard must read
            self._executor = Executor(
                self.app,
                self.handler,
                get_settings(),
                batched=True,
                chain_input=self.chain_input,
            )
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
        sink = _StoreEach(self, events, {r.id: r for r in requests})
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


def _parent_of(request: Request) -> str | None:
    """The job a chunk of a fanned-out job was started for (``PARENT_HEADER``), else None.
    A chunk takes a batch of its own and is dropped when that job is revoked."""
    parent = (request.request_dict or {}).get(PARENT_HEADER)
    return str(parent) if parent else None


def _drain(queue: Any) -> list[Request]:
    """Everything in a ``queue.Queue`` now, oldest first (the consumer's only thread)."""
    taken = []
    while queue.qsize():
        taken.append(queue.get_nowait())
    return taken


def _ended(requests: Collection[Request]) -> None:
    """The batch's child is done with them: no longer active (nor revocable by terminate)."""
    for request in requests:
        worker_state.task_ready(request)


#: a message header naming the job this one was started for (a long recording's chunk):
#: when that job is revoked, the worker drops this one too
PARENT_HEADER = "mlworker_parent"
#: what a ``Deferred`` job keeps of its message to be sent again (``worker.deferred``)
_FOLLOWUPS = ("callbacks", "errbacks", "chain", "root_id", "parent_id")


def _ticket(task_name: str, request: SimpleRequest) -> Ticket:
    delivery = request.delivery_info or {}
    context = request.request_dict or {}
    return Ticket(
        id=request.id,
        task=task_name,
        kwargs=dict(request.kwargs or {}),
        args=tuple(request.args or ()),
        retries=int(context.get("retries") or 0),
        queue=delivery.get("routing_key"),
        priority=delivery.get("priority"),
        followups={k: context[k] for k in _FOLLOWUPS if context.get(k)},
    )


class _StoreEach:
    """Sink of a batch: each request's own result or failure, and its Flower event; the
    successes of one model call stored and announced together."""

    def __init__(
        self, task: IsolatedBatches, events: RequestEvents, requests: dict[str, SimpleRequest]
    ) -> None:
        self.app = task.app
        self.requests = requests
        self.events = events
        #: ids whose end is recorded: their messages may be acked
        self.settled: set[str] = set()

    def successes(self, ended: Sequence[tuple[Ticket, dict[str, Any]]]) -> None:
        store_successes(self.app, [(self.requests[t.id], result) for t, result in ended])
        self.settled.update(ticket.id for ticket, _ in ended)
        self.events.succeeded([(ticket.id, result) for ticket, result in ended])

    def failure(self, ticket: Ticket, exc: BaseException) -> None:
        if not isinstance(exc, JobError):
            log.error("request %s failed: %r", ticket.id, exc, exc_info=exc)
        tb = "".join(traceback.format_exception(exc))
        store_failure(self.app, self.requests[ticket.id], exc, tb)
        self.settled.add(ticket.id)
        self.events.failed(ticket.id, exc, tb)

    def requeued(self, ticket: Ticket) -> None:
        self.settled.add(ticket.id)

    def skipped(self, ticket: Ticket) -> None:
        self.settled.add(ticket.id)
