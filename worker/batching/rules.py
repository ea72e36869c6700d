"""When a batched task flushes its buffer: pure functions of the buffer's state and the clock.

celery-batches flushes when the buffer holds ``flush_every`` requests, and on a periodic timer.
mlworker adds the idle rule: a partial buffer is flushed once no request has arrived for
``idle_s`` *while a pool child is free*, so a lone job starts at once; with every child busy
the buffer keeps filling (a flush could only queue behind the running batch).
``interval_s`` still caps how long the oldest buffered request waits. A request that
arrives to an empty buffer with a child free does not wait out ``idle_s`` either
(``starts_at_once``): nothing is there to group it with, and whatever arrives while it runs
groups behind it, so batches still form under load.

What a flush runs (``pick_batch``): batches of at most ``batch_size`` requests, the most
urgent first. kombu's Redis transport reads priority 0 as the most urgent and 9 as the
least; a message sent without one counts as 0, so bulk work is sent at a larger number. A
storm of requests falling due together (countdowns, retries) runs batch by batch, each its
own pool job within the task's time limit. Only as many batches run as there are
children; the rest waits in the consumer, not in the pool's queue, so a more urgent
request that arrives later still makes the next batch. Behind a backlog the prefetch window
is full and an urgent request stays in Redis until a batch comes back and its acks free
the window; the worker then fetches the most urgent Redis list first, and the next batch
waits for what is fetched as long as it is more urgent than the batch (``keeps_refilling``,
``REFILL_WAIT_S`` at most between two), so an urgent request starts as soon as the batch
running when it was sent has finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: kombu's Redis transport: 0 is the most urgent level, 9 the least (levels 0-9 accepted)
MOST_URGENT, LEAST_URGENT = 0, 9

#: the finest timer period: below this the consumer's event loop spends its time on ticks
MIN_TICK_S = 0.005
#: how long a full batch waits, after one came back, for the next message fetched since
#: its acks (the most urgent in Redis first). Measured behind a 3,000-job backlog on 2
#: cores: the first came 33-35 ms after the acks; none by this deadline: Redis is empty
REFILL_WAIT_S = 0.1


@dataclass(frozen=True)
class BufferState:
    """What the consumer knows when its flush timer fires."""

    buffered: int
    batch_size: int
    #: monotonic time of the oldest buffered request's arrival (None: none since the last flush)
    first_arrival: float | None
    last_arrival: float
    #: batches handed to the pool and not yet returned
    in_flight: int
    children: int


def should_flush(state: BufferState, now: float, *, idle_s: float, interval_s: float) -> bool:
    """Whether a timer tick at ``now`` flushes the buffer.

    With ``idle_s`` 0 every tick flushes (celery-batches' plain periodic timer). Otherwise a
    partial buffer waits while requests keep arriving or every child is busy, but never
    longer than ``interval_s`` after its oldest request arrived.
    """
    if idle_s <= 0 or not 0 < state.buffered < state.batch_size:
        return True
    first = state.first_arrival if state.first_arrival is not None else now
    if now - first >= interval_s:
        return True
    quiet = now - state.last_arrival >= idle_s
    return quiet and state.in_flight < max(1, state.children)


def starts_at_once(state: BufferState, *, idle_s: float) -> bool:
    """Whether the request just buffered flushes on arrival: it is alone in the buffer and
    a child is free (with the idle rule on; ``idle_s`` 0 keeps celery-batches' timer)."""
    return idle_s > 0 and state.buffered == 1 and state.in_flight < max(1, state.children)


def fills_a_batch(state: BufferState) -> bool:
    """Whether a full batch is waiting and a child is free to run it now."""
    return state.buffered >= state.batch_size and state.in_flight < max(1, state.children)


def keeps_refilling(waiting: Sequence[int], arrived: int, batch_size: int) -> bool:
    """Whether the next batch waits for one more message, after one that arrived since a
    batch's acks: ``arrived`` (its priority) is more urgent than the least urgent request
    the batch would take from ``waiting`` without it. The worker fetches the most urgent
    Redis list first, so an arrival that is not more urgent means none more urgent waits."""
    taken = sorted(waiting)[: max(1, batch_size)]
    return len(taken) >= batch_size and arrived < taken[-1]


def tick_s(*, idle_s: float, interval_s: float) -> float:
    """Period of the flush timer: the plain interval, or fine enough for the idle rule."""
    if idle_s <= 0:
        return interval_s
    return max(MIN_TICK_S, min(idle_s, interval_s) / 2)


def priority_of(value: object) -> int:
    """A message's priority as kombu's Redis transport ranks it (None: 0, the most urgent)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return MOST_URGENT
    return min(max(value, MOST_URGENT), LEAST_URGENT)


def pick_batch(priorities: Sequence[int], batch_size: int) -> list[int]:
    """Indexes of the next batch among requests waiting in arrival order: at most
    ``batch_size``, the most urgent first, first come first within one level."""
    order = sorted(range(len(priorities)), key=lambda index: (priorities[index], index))
    return order[: max(1, batch_size)]
