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
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from celery import states
from celery_batches import Batches, SimpleRequest

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
        valid: list[tuple[SimpleRequest, Item]] = []
        for request in requests:
            try:
                self.check_delivery(request)
                if request.args:
                    raise JobError("positional arguments are not accepted; send kwargs")
                valid.append((request, self.parse(dict(request.kwargs or {}))))
            except Exception as exc:  # noqa: BLE001 - every parse error fails only its request
                self.store_failure(request, exc)
        limit = max(1, self.batch_limit())
        for start in range(0, len(valid), limit):
            self._run_isolated(valid[start : start + limit])

    def check_delivery(self, request: SimpleRequest) -> None:
        """Dead-letter a request that has been started too often (it kills its worker)."""
        from config import get_settings
        from worker.delivery import count_delivery, dead_letter

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
