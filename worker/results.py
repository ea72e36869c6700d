"""The result store as the runtime uses it: read many records in one round trip, write one
or a batch's.

A thin layer over Celery's Redis result backend (its key layout and encoding), so that
admission, batching and telemetry never build backend keys by hand.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

from celery import states
from celery.app.task import Context


class ResultStore:
    """Stored job records of one Celery app's Redis result backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def records(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The stored record of each job (status, result, ...), None where nothing is stored."""
        if not job_ids:
            return []
        backend = self.backend
        raw = backend.client.mget([backend.get_key_for_task(job_id) for job_id in job_ids])
        return [dict(backend.decode_result(payload)) if payload else None for payload in raw]

    def finished(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` already have a final state (SUCCESS, FAILURE, REVOKED)."""
        return {
            job_id
            for job_id, record in zip(job_ids, self.records(job_ids), strict=True)
            if record is not None and record.get("status") in states.READY_STATES
        }

    def success(self, job_id: str, result: dict[str, Any]) -> None:
        self.backend.store_result(job_id, result, states.SUCCESS)

    def successes(self, ended: Sequence[tuple[Context, dict[str, Any]]]) -> None:
        """Store many jobs' results in two round trips, each record the one Celery's
        ``mark_as_done`` writes for that request (``result_extended`` fields, expiry, the
        publish a waiting ``AsyncResult.get`` hears), and like it never over a SUCCESS
        already stored (a job delivered twice). Requests that ignore their result are
        passed over; chord parts are the caller's (their part is counted per request)."""
        backend = self.backend
        kept = [(c, r) for c, r in ended if not c.ignore_result]
        if not kept:
            return
        keys = [backend.get_key_for_task(context.id) for context, _ in kept]
        stored = backend.client.mget(keys)
        with backend.client.pipeline() as pipe:
            for (context, result), key, before in zip(kept, keys, stored, strict=True):
                if before and backend.decode_result(before).get("status") == states.SUCCESS:
                    continue
                meta = backend._get_result_meta(
                    result=result, state=states.SUCCESS, traceback=None, request=context
                )
                meta["task_id"] = context.id
                value = backend.encode(meta)
                pipe.set(key, value, ex=backend.expires or None)
                pipe.publish(key, value)
            pipe.execute()

    def failure(self, job_id: str, exc: BaseException) -> str:
        """Store ``exc`` as the job's failure; returns the formatted traceback."""
        tb = "".join(traceback.format_exception(exc))
        # request=None: celery-batches' SimpleRequest lacks what mark_as_failure reads from one
        self.backend.mark_as_failure(job_id, exc, traceback=tb, request=None)
        return tb

    def retrying(self, job_id: str, exc: BaseException) -> None:
        """Record that the job was sent back to its queue, and why."""
        self.backend.mark_as_retry(job_id, exc)

    def progress(self, job_id: str, meta: dict[str, Any]) -> None:
        self.backend.store_result(job_id, meta, "PROGRESS")
