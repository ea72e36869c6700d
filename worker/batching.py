"""celery-batches with per-request isolation.

celery-batches 0.11 hands the batch function a list of ``SimpleRequest`` and stores nothing
itself: an exception in the batch function is logged and the whole batch acked, and
``backend.mark_as_failure(..., request=simple_request)`` raises AttributeError (no
``errbacks``). ``IsolatedBatches`` validates each request first, runs the valid ones as one
call, splits and retries the halves when that call fails, and stores one result or one
failure per request id, so a poison request cannot cost its batch-mates their results.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Collection, Sequence
from typing import Any, Generic, TypeVar

from billiard.exceptions import WorkerLostError
from celery import states
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from config import get_settings
from worker.admission import kill_this_child, memory_refusal, put_back, take_test_hooks
from worker.delivery import count_delivery, dead_letter, previous_starts
from worker.errors import InsufficientMemory, JobError

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class IsolatedBatches(Batches, Generic[Item]):  # type: ignore[misc]
    """A batch task whose requests each get their own stored result or failure.

    Subclasses implement ``parse`` (kwargs -> typed item, raising ``InvalidInput``) and
    ``run_items`` (items -> one JSON-able result per item, in order). ``run_items`` may put a
    ``JobError`` in an item's place to fail that request alone (e.g. its file did not decode)
    without re-running its batch-mates; ``group_requests`` holds the requests behind the
    items being run, in order, for per-request progress.
    """

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    typing = False

    def parse(self, kwargs: dict[str, Any]) -> Item:
        raise NotImplementedError

    def run_items(self, items: Sequence[Item]) -> Sequence[dict[str, Any] | JobError]:
        raise NotImplementedError

    group_requests: Sequence[SimpleRequest] = ()

    def batch_limit(self) -> int:
        """Largest group handed to ``run_items`` at once; subclasses let the memory guard shrink it.

        Not the buffer length: ``run`` executes in a pool child, whose copy of the task's
        buffer is always empty (the buffer lives in the consumer process).
        """
        return max(1, int(self.flush_every))

    #: flush a partial buffer once no request has arrived for this long while a pool child is
    #: free, so a lone job starts at once; with every child busy the buffer keeps filling
    #: (a flush could only queue behind the running batch). ``flush_interval`` still caps how
    #: long the oldest buffered request waits. 0: celery-batches' plain periodic timer (a
    #: lone job waits up to ``flush_interval``, and a burst that straddles a tick is split).
    flush_idle_s: float = 0.0
    _first_arrival: float | None = None
    _last_arrival: float = 0.0
    #: batches handed to the pool and not yet returned (consumer process only)
    _in_flight: int = 0

    def _tick_s(self) -> float:
        """Period of the flush timer: the plain interval, or fine enough for the idle rule."""
        if self.flush_idle_s <= 0:
            return float(self.flush_interval)
        return max(0.005, min(self.flush_idle_s, float(self.flush_interval)) / 2)

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 - Celery's name
        """Rebuilt on every consumer (re)start; give the new consumer its own flush timer.

        celery-batches keeps ``_tref`` from the consumer that died with the broker
        connection, so after a reconnect it never starts a timer again and a partial buffer
        waits for a full one (celery-batches #99/#107). The handler notes arrival times for
        the idle rule (``flush_idle_s``) and runs the timer at ``_tick_s``.
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

        return handler

    def _do_flush(self) -> None:
        """celery-batches' flush, skipped on a timer tick while a partial buffer still fills."""
        buffered = self._buffer.qsize()
        if self.flush_idle_s > 0 and 0 < buffered < self.flush_every:
            now = time.monotonic()
            first = self._first_arrival if self._first_arrival is not None else now
            children = max(1, int(getattr(self._pool, "num_processes", 1) or 1))
            quiet = now - self._last_arrival >= self.flush_idle_s
            if (self._in_flight >= children or not quiet) and now - first < self.flush_interval:
                return
        self._first_arrival = None
        super()._do_flush()

    def flush(self, requests: Collection[Request]) -> Any:
        """celery-batches' flush plus what happens when the child dies or times out.

        celery-batches passes no ``error_callback``, so a batch whose child is killed (OOM,
        segfault, kill -9) is neither acked nor rejected: its messages sit unacked until
        the visibility timeout (an hour here). With ``reject_on_worker_lost`` they go back
        to the queue at once, as a plain task's message does.
        """
        late = [r for r in requests if r.task.acks_late]
        early = [r for r in requests if not r.task.acks_late]
        simple = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for request in early:
                request.acknowledge()

        def on_return(result: Any) -> None:
            self._in_flight -= 1
            for request in late:
                request.acknowledge()

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

    # celery-batches calls run() with the list of requests in the pool child.
    def run(self, requests: list[SimpleRequest]) -> None:  # type: ignore[override]
        self._dispatcher = self._open_dispatcher(requests)
        try:
            self._run_requests(requests)
        finally:
            if self._dispatcher is not None:
                self._dispatcher.close()
            self._dispatcher = None

    def _run_requests(self, requests: list[SimpleRequest]) -> None:
        """Admit, parse, then run: first-time requests in groups, redelivered ones alone.

        A request delivered again after its batch's child died may be the one that killed
        it. Run alone, only the culprit dies again, so only it runs out of deliveries; a
        batch-mate that already stored its result before the crash is not run twice.
        """
        refusal = memory_refusal(self.name, [r.id for r in requests])
        if refusal is not None:
            for request in requests:
                self.requeue_refused(request, refusal)
            return
        fresh: list[tuple[SimpleRequest, Item]] = []
        suspects: list[tuple[SimpleRequest, Item]] = []
        starts = previous_starts(self.app, [r.id for r in requests])
        finished = self._finished([r.id for r, n in zip(requests, starts, strict=True) if n])
        for request, started_before in zip(requests, starts, strict=True):
            if request.id in finished:
                log.info("request %s already has its result; not run again", request.id)
                continue
            try:
                if request.args:
                    raise JobError("positional arguments are not accepted; send kwargs")
                kwargs = dict(request.kwargs or {})
                take_test_hooks(kwargs)
                item = self.parse(kwargs)
            except Exception as exc:  # noqa: BLE001 - every parse error fails only its request
                self.store_failure(request, exc)
                continue
            (suspects if started_before else fresh).append((request, item))
        limit = max(1, self.batch_limit())
        for start in range(0, len(fresh), limit):
            self._start_group(fresh[start : start + limit])
        for suspect in suspects:
            self._start_group([suspect])

    def _start_group(self, group: Sequence[tuple[SimpleRequest, Item]]) -> None:
        """Count a start for each request (dead-lettering the exhausted), then run the rest."""
        admitted = []
        for request, item in group:
            try:
                self.check_delivery(request)
            except JobError as exc:
                self.store_failure(request, exc)
                continue
            admitted.append((request, item))
        for request, _ in admitted:
            if take_test_hooks(dict(request.kwargs or {})):
                kill_this_child(request.id)
        self._run_isolated(admitted)

    def _finished(self, task_ids: list[str]) -> set[str]:
        """Which of ``task_ids`` already have a SUCCESS or FAILURE stored."""
        if not task_ids:
            return set()
        backend = self.backend
        raw = backend.client.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
        return {
            task_id
            for task_id, payload in zip(task_ids, raw, strict=True)
            if payload and backend.decode_result(payload).get("status") in states.READY_STATES
        }

    def requeue_refused(self, request: SimpleRequest, reason: str) -> None:
        """Requeue a request the memory guard refused, with a countdown (not a delivery)."""
        retries = int((request.request_dict or {}).get("retries") or 0)
        queue = (request.delivery_info or {}).get("routing_key")
        put_back(
            self.app, self.name, queue, request.id, dict(request.kwargs or {}), retries, reason
        )

    def check_delivery(self, request: SimpleRequest) -> None:
        """Dead-letter a request that has been started too often (it kills its worker)."""
        deliveries = count_delivery(self.app, request.id)
        limit = get_settings().max_deliveries
        if deliveries > limit:
            reason = f"started {deliveries - 1} times without finishing (limit {limit})"
            raise dead_letter(self.app, self.name, request.id, dict(request.kwargs or {}), reason)

    def _run_isolated(self, group: Sequence[tuple[SimpleRequest, Item]]) -> None:
        """Run ``group`` as one call; on failure bisect until the failing request is alone."""
        if not group:
            return
        started = time.perf_counter()
        self.group_requests = [request for request, _ in group]
        try:
            results = self.run_items([item for _, item in group])
            if len(results) != len(group):
                raise RuntimeError(f"run_items returned {len(results)} results for {len(group)}")
        except Exception as exc:  # noqa: BLE001 - isolate, then fail only the culprit
            if isinstance(exc, SoftTimeLimitExceeded):  # bisecting would only run longer
                for request, _ in group:
                    self.store_failure(request, exc)
                return
            if len(group) == 1:
                if isinstance(exc, MemoryError):
                    exc = InsufficientMemory(f"out of memory even for one request: {exc}")
                self.store_failure(group[0][0], exc)
                return
            log.warning("batch of %d failed (%r); splitting", len(group), exc)
            middle = len(group) // 2
            self._run_isolated(group[:middle])
            self._run_isolated(group[middle:])
            return
        elapsed = time.perf_counter() - started
        for (request, _), result in zip(group, results, strict=True):
            if isinstance(result, JobError):
                self.store_failure(request, result)
                continue
            result.setdefault("batch", {"size": len(group), "elapsed_s": round(elapsed, 4)})
            self.store_success(request, result)

    def store_success(self, request: SimpleRequest, result: dict[str, Any]) -> None:
        self.backend.store_result(request.id, result, states.SUCCESS)
        self._send_request_event(request, "task-succeeded", result=repr(result)[:256])

    def store_failure(self, request: SimpleRequest, exc: BaseException) -> None:
        if not isinstance(exc, JobError):
            log.error("request %s failed: %r", request.id, exc, exc_info=exc)
        tb = "".join(traceback.format_exception(exc))
        # request=None: passing the SimpleRequest makes celery-batches 0.11 raise (no errbacks).
        self.backend.mark_as_failure(request.id, exc, traceback=tb, request=None)
        self._send_request_event(
            request, "task-failed", exception=repr(exc)[:512], traceback=tb[-2000:]
        )

    _dispatcher: Any = None

    def _open_dispatcher(self, requests: list[SimpleRequest]) -> Any:
        """One event dispatcher per batch: Flower then shows each request, not one batch."""
        if not self.app.conf.worker_send_task_events or not requests:
            return None
        try:
            dispatcher = self.app.events.Dispatcher(
                self.app.connection_for_write(), hostname=requests[0].hostname
            )
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("no event dispatcher: %r", exc)
            return None
        for request in requests:
            self._send(dispatcher, request, "task-started")
        return dispatcher

    def _send_request_event(self, request: SimpleRequest, kind: str, **fields: Any) -> None:
        if self._dispatcher is not None:
            self._send(self._dispatcher, request, kind, **fields)

    @staticmethod
    def _send(dispatcher: Any, request: SimpleRequest, kind: str, **fields: Any) -> None:
        try:
            dispatcher.send(kind, uuid=request.id, **fields)
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a job
            log.debug("event %s for %s not sent: %r", kind, request.id, exc)
