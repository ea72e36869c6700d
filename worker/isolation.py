"""Run many items as one call, and when that call fails, find the item that failed it.

``run_isolated`` is a plain function over items: it knows nothing of Celery. A call that
raises is split in halves until the failing item is alone, so one poison request costs its
batch-mates a retry, never their results. Items that ran out of memory even after their
call's own lightweight retry are tried again in smaller groups, down to one item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def run_isolated(
    items: Sequence[T], attempt: Callable[[Sequence[T]], Sequence[R | BaseException]]
) -> list[R | BaseException]:
    """``attempt(items)``, with every failure narrowed down to the items that cause it.

    Args:
        items: what to run.
        attempt: runs a group, returning one outcome per item (an exception instance fails
            that item alone) or raising to fail the whole group.

    Returns:
        One outcome per item, in order: what ``attempt`` returned for it, or the exception
        that failed it once it ran alone. A soft time limit fails the whole group at once
        (splitting would only run past the hard limit).
    """
    if not items:
        return []
    try:
        outcomes = list(attempt(items))
    except Exception as exc:  # noqa: BLE001 - isolate, then fail only the culprit
        if len(items) == 1 or isinstance(exc, SoftTimeLimitExceeded):
            return [exc] * len(items)
        log.warning("group of %d failed (%r); splitting", len(items), exc)
        return _halves(items, attempt)
    if len(outcomes) != len(items):
        raise RuntimeError(f"{len(outcomes)} outcomes for {len(items)} items")
    short = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, MemoryError)]
    if short and len(items) > 1:
        log.warning(
            "%d of %d ran out of memory; retrying in smaller groups", len(short), len(items)
        )
        retried = _halves([items[i] for i in short], attempt)
        for index, outcome in zip(short, retried, strict=True):
            outcomes[index] = outcome
    return outcomes


def _halves(
    items: Sequence[T], attempt: Callable[[Sequence[T]], Sequence[R | BaseException]]
) -> list[R | BaseException]:
    """Each half on its own (one item stays one group)."""
    if len(items) == 1:
        return run_isolated(items, attempt)
    middle = len(items) // 2
    return run_isolated(items[:middle], attempt) + run_isolated(items[middle:], attempt)
