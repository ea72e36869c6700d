"""What every mlworker task shares: the task base class and the result envelope."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Literal

from celery import Task, states
from celery.exceptions import Ignore

from config import get_settings
from worker.errors import InsufficientMemory, JobError
from worker.registry import registry

Mode = Literal["normal", "lightweight"]


class MLTask(Task):  # type: ignore[misc]
    """Plain (unbatched) job: late ack, requeue if the child dies, no automatic retry.

    ``JobError`` subclasses are expected failures: stored with their type and message,
    logged without a traceback, never retried.
    """

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    throws = (JobError,)
    max_retries = 0
    typing = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Admit the job (memory guard, delivery count), then run it with MemoryError kept in.

        A hard memory refusal requeues the job with a countdown and is not counted as a
        delivery. A MemoryError that escapes a task makes the worker parent re-raise it
        (celery.worker.request.on_failure), so it becomes ``InsufficientMemory`` here.
        """
        from worker.admission import kill_this_child, memory_refusal, take_test_hooks
        from worker.delivery import count_delivery, dead_letter

        request = self.request
        original = dict(kwargs)  # a dead-lettered job keeps every kwarg it came with
        kill = take_test_hooks(kwargs)
        if request.id and not request.is_eager:
            settings = get_settings()
            refusal = memory_refusal(self.name, [request.id])
            if refusal is not None:
                raise self.retry(
                    exc=InsufficientMemory(refusal),
                    countdown=settings.memory_refusal_countdown_s,
                    max_retries=settings.memory_refusal_max_retries,
                )
            deliveries = count_delivery(self.app, request.id)
            if deliveries > 1 and self._already_finished(request.id):
                # redelivered after its result was stored (e.g. restored after a broker
                # outage while it ran): acknowledge without running or storing it again
                raise Ignore()
            limit = settings.max_deliveries
            if deliveries > limit:
                reason = f"started {deliveries - 1} times without finishing (limit {limit})"
                raise dead_letter(self.app, self.name, request.id, original, reason)
            if kill:
                kill_this_child(request.id)
        try:
            return super().__call__(*args, **kwargs)
        except MemoryError as exc:
            raise InsufficientMemory(f"out of memory even in lightweight mode: {exc}") from exc

    def _already_finished(self, task_id: str) -> bool:
        status = self.backend.get_task_meta(task_id, cache=False).get("status")
        return status in states.READY_STATES


def envelope(
    payload: dict[str, Any],
    *,
    model_name: str,
    mode: Mode,
    mode_reason: str = "",
    started: float | None = None,
) -> dict[str, Any]:
    """Stamp a family's result with what produced it: model, backend, mode, worker, time."""
    model = registry.describe(model_name)
    payload.update(
        model=model,
        backend=model.get("backend"),
        mode=mode,
        mode_reason=mode_reason or None,
        worker={"hostname": socket.gethostname(), "pid": os.getpid()},
    )
    if started is not None:
        payload["elapsed_s"] = round(time.perf_counter() - started, 4)
    return payload
