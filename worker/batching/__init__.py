"""celery-batches with per-request isolation.

celery-batches 0.11 hands the batch function a list of ``SimpleRequest`` and stores nothing
itself: an exception in the batch function is logged and the whole batch acked, and
``backend.mark_as_failure(..., request=simple_request)`` raises AttributeError (no
``errbacks``). It also passes no ``error_callback`` to the pool (a batch whose child dies is
never rejected), no time limits, and keeps a dead consumer's flush timer after a reconnect.

mlworker patches around it in three pieces:

- ``rules``: when to flush (the idle rule), as pure functions;
- ``task.IsolatedBatches``: the thin subclass over celery-batches' private attributes
  (``_tref``, ``_buffer``, ``_pending``, ``_pool``): timer, flush callbacks, and handing the
  flushed requests to ``worker.execution.Executor``, which admits, parses and runs them and
  stores one result or one failure per request id (``worker.isolation`` narrows a failing
  call down to its request), so a poison request cannot cost its batch-mates their results;
- ``events``: a Flower event per request.
"""

from worker.batching.task import IsolatedBatches

__all__ = ["IsolatedBatches"]
