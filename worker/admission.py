"""Whether a delivered job runs now: one path for plain and batched tasks.

Before anything else runs, each job is *screened*: the memory guard's hard threshold
(refuse: the job goes back to its queue with a countdown and is not counted as a delivery,
because it did nothing wrong; after ``memory_refusal_max_retries`` refusals it fails with
``InsufficientMemory``), then "already finished?" for a job started before (its result is
stored: acknowledge it without running it again). Right before a job starts, its start is
*counted*; past ``max_deliveries`` it goes to the dead-letter queue instead. A job started
before runs alone: if it is the one that killed its child, only it dies again.

The rules are pure functions (``screen``, ``count_start``); ``Gate`` does the reading and
writing for them. The child that refused is recycled by ``worker_max_memory_per_child``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from celery import Celery

from config import Settings
from worker.delivery import count_delivery, dead_letter, previous_starts
from worker.errors import InsufficientMemory
from worker.memory import MemoryCheck, MemoryGuard
from worker.results import ResultStore

log = logging.getLogger(__name__)


class Action(Enum):
    RUN = "run"
    #: back to the queue with a countdown (memory refusal)
    REQUEUE = "requeue"
    #: fail now with ``InsufficientMemory`` (refused too many times)
    FAIL = "fail"
    #: its result is already stored: acknowledge, do not run or store again
    SKIP = "skip"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Ticket:
    """One delivered job, whatever the task type: what admission needs to know."""

    id: str
    task: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: positional arguments: refused (a request's fields have names)
    args: tuple[Any, ...] = ()
    #: memory refusals so far (Celery's ``retries`` header)
    retries: int = 0
    queue: str | None = None
    #: the message's priority (kombu's Redis levels: 0 most urgent); a requeue keeps it
    priority: int | None = None
    #: what follows the job: ``callbacks``, ``errbacks``, ``chain``, ``root_id``,
    #: ``parent_id`` (as the message carried them); kept when the job is ``Deferred``
    followups: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    #: started before without finishing: run it alone
    suspect: bool = False


def screen(
    *, refusal: str | None, retries: int, max_refusals: int, starts_before: int, finished: bool
) -> Decision:
    """The verdict before a job is parsed: refused, already finished, or to run."""
    if refusal is not None:
        if retries >= max_refusals:
            return Decision(Action.FAIL, f"{refusal} ({retries} refusals in a row)")
        return Decision(Action.REQUEUE, refusal)
    if starts_before and finished:
        return Decision(Action.SKIP, "already has its result")
    return Decision(Action.RUN, suspect=starts_before > 0)


def count_start(deliveries: int, limit: int) -> Decision:
    """The verdict once this start is counted: dead-letter past ``limit`` starts."""
    if deliveries > limit:
        reason = f"started {deliveries - 1} times without finishing (limit {limit})"
        return Decision(Action.DEAD_LETTER, reason)
    return Decision(Action.RUN)


class Gate:
    """Reads what ``screen`` and ``count_start`` decide on, and carries out requeues."""

    def __init__(self, app: Celery, settings: Settings, guard: MemoryGuard) -> None:
        self.app = app
        self.settings = settings
        self.guard = guard
        self.store = ResultStore(app.backend)

    def screen(self, tickets: Sequence[Ticket]) -> tuple[MemoryCheck, list[Decision]]:
        """One memory reading for all ``tickets`` (its verdict also picks the run mode),
        one read of start counts and one of stored results."""
        check = self.guard.check()
        refusal = None
        starts = [0] * len(tickets)
        finished: set[str] = set()
        if check.verdict == "refuse":
            refusal = f"memory guard refused to start: {check.reason}"
            log.warning(
                "%s: %s; requeued in %.0fs, child recycles",
                tickets[0].task if tickets else "?",
                refusal,
                self.settings.memory_refusal_countdown_s,
                extra={"job_ids": [t.id for t in tickets], "memory": check.as_dict()},
            )
        else:
            starts = previous_starts(self.app, [t.id for t in tickets])
            again = [t.id for t, n in zip(tickets, starts, strict=True) if n]
            finished = self.store.finished(again)
        decisions = [
            screen(
                refusal=refusal,
                retries=ticket.retries,
                max_refusals=self.settings.memory_refusal_max_retries,
                starts_before=started,
                finished=ticket.id in finished,
            )
            for ticket, started in zip(tickets, starts, strict=True)
        ]
        return check, decisions

    def start(self, ticket: Ticket) -> Decision:
        """Count this start; a job past ``max_deliveries`` is parked on the dead-letter queue."""
        decision = count_start(count_delivery(self.app, ticket.id), self.settings.max_deliveries)
        if decision.action is Action.DEAD_LETTER:
            dead_letter(self.app, ticket.task, ticket.id, ticket.kwargs, decision.reason)
        return decision

    def requeue(self, ticket: Ticket, reason: str) -> None:
        """Send the job back to its queue with a countdown; its record says why (RETRY)."""
        self.app.send_task(
            ticket.task,
            kwargs=ticket.kwargs,
            task_id=ticket.id,
            queue=ticket.queue,
            countdown=self.settings.memory_refusal_countdown_s,
            retries=ticket.retries + 1,
            priority=ticket.priority,
        )
        self.store.retrying(ticket.id, InsufficientMemory(reason))
