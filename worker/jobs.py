"""``PlainTask``: the Celery shell of an unbatched task (one message, one run).

It hands its one job to ``worker.execution.Executor`` like a batched task hands its buffer,
so admission, modes, the lightweight retry and isolation are the same code. What differs
is the ending: the result is returned for Celery to store, a failure is raised, and a job
that was requeued or had its result already is acknowledged without a new record
(``Ignore``). Late ack, requeue if the child dies, no automatic retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Ignore

from config import get_settings
from worker.admission import Ticket
from worker.errors import JobError
from worker.execution import Executor
from worker.handler import Handler


class PlainTask(Task):  # type: ignore[misc]
    """``JobError`` subclasses are expected failures: stored with their type and message,
    logged without a traceback, never retried. The runtime sets ``name``, ``handler`` and
    ``family`` on a subclass per plain ``TaskSpec``."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    throws = (JobError,)
    max_retries = 0
    typing = False

    handler: ClassVar[Handler[Any]]
    family: ClassVar[str] = ""
    #: previous result -> kwargs (``TaskSpec.chain_input``); None: positional args refused
    chain_input: ClassVar[Any] = None  # a staticmethod(ChainInput) set by worker.entry
    _executor: Executor[Any] | None = None

    @property
    def executor(self) -> Executor[Any]:
        if self._executor is None:  # built in the child, whose memory guard must read
            self._executor = Executor(
                self.app,
                self.handler,
                get_settings(),
                batched=False,
                chain_input=self.chain_input,
            )
        return self._executor

    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        request = self.request
        ticket = Ticket(
            id=request.id,
            task=self.name,
            kwargs=dict(kwargs),
            args=tuple(args),
            retries=int(request.retries or 0),
            queue=(request.delivery_info or {}).get("routing_key"),
            priority=(request.delivery_info or {}).get("priority"),
        )
        ending = _Ending()
        self.executor.execute([ticket], 1, ending)
        if ending.error is not None:
            raise ending.error
        if ending.result is None:
            raise Ignore()  # requeued with a countdown, or finished before: nothing to store
        return ending.result


class _Ending:
    """Sink of a plain task: keeps its one job's result or error."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def successes(self, ended: Sequence[tuple[Ticket, dict[str, Any]]]) -> None:
        for _, result in ended:  # a plain task runs one job
            self.result = result

    def failure(self, ticket: Ticket, exc: BaseException) -> None:
        self.error = exc

    def requeued(self, ticket: Ticket) -> None:
        pass

    def skipped(self, ticket: Ticket) -> None:
        pass
