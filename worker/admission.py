"""Whether a delivered job may start now, shared by plain and batched tasks.

Three checks run before any family code: the memory guard's hard threshold (refuse: the job
goes back to its queue with a countdown, and is *not* counted as a delivery, because the job
did nothing wrong), the delivery counter (dead-letter past ``max_deliveries``), and the
test-only kill hook. The child that refused is recycled by ``worker_max_memory_per_child``,
which ``worker.app`` sets no higher than the hard RSS threshold.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from celery import Celery

from config import get_settings
from worker.errors import InsufficientMemory
from worker.memory import hard_refusal

log = logging.getLogger(__name__)

#: kwarg honoured only with ``MLWORKER_TEST_HOOKS=1``: the child SIGKILLs itself at job start
KILL_HOOK = "_test_kill_child"


def memory_refusal(task_name: str, job_ids: list[str]) -> str | None:
    """Why the hard memory threshold forbids starting ``job_ids`` now, or None to go ahead."""
    check = hard_refusal()
    if check is None:
        return None
    reason = f"memory guard refused to start: {check.reason}"
    log.warning(
        "%s: %s; requeued in %.0fs, child recycles",
        task_name,
        reason,
        get_settings().memory_refusal_countdown_s,
        extra={"job_ids": job_ids, "memory": check.as_dict()},
    )
    return reason


def put_back(
    app: Celery,
    task_name: str,
    queue: str | None,
    job_id: str,
    kwargs: dict[str, Any],
    retries: int,
    reason: str,
) -> None:
    """Requeue a refused batched request with a countdown; its result records why (RETRY).

    Past ``memory_refusal_max_retries`` refusals the request fails with InsufficientMemory.
    """
    settings = get_settings()
    exc = InsufficientMemory(reason)
    if retries >= settings.memory_refusal_max_retries:
        app.backend.mark_as_failure(job_id, exc, request=None)
        return
    app.send_task(
        task_name,
        kwargs=kwargs,
        task_id=job_id,
        queue=queue,
        countdown=settings.memory_refusal_countdown_s,
        retries=retries + 1,
    )
    app.backend.mark_as_retry(job_id, exc)


def take_test_hooks(kwargs: dict[str, Any]) -> bool:
    """Remove the test hook from ``kwargs`` when hooks are on; True if it asks for a kill.

    With hooks off the kwarg stays, and the family rejects it as an unknown option.
    """
    if not get_settings().test_hooks:
        return False
    return bool(kwargs.pop(KILL_HOOK, False))


def kill_this_child(job_id: str) -> None:
    """The poison-job hook: die the way an OOM kill or a segfault would (no cleanup)."""
    log.warning("test hook: job %s kills child pid %d", job_id, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
