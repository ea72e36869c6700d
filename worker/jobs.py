"""What every mlworker task shares: the task base class and the result envelope."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Literal

from celery import Task

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
        """Count the delivery (dead-letter past the limit) and keep MemoryError in the job.

        A MemoryError that escapes a task makes the worker parent re-raise it
        (celery.worker.request.on_failure), so it becomes ``InsufficientMemory`` here.
        """
        from worker.delivery import count_delivery, dead_letter

        request = self.request
        if request.id and not request.is_eager:
            deliveries = count_delivery(self.app, request.id)
            limit = get_settings().max_deliveries
            if deliveries > limit:
                reason = f"started {deliveries - 1} times without finishing (limit {limit})"
                raise dead_letter(self.app, self.name, request.id, dict(kwargs), reason)
        try:
            return super().__call__(*args, **kwargs)
        except MemoryError as exc:
            raise InsufficientMemory(f"out of memory even in lightweight mode: {exc}") from exc


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
