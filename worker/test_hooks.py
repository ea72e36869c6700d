"""Test-only kwargs, honoured only when ``MLWORKER_TEST_HOOKS=1``; never in production.

With hooks off these kwargs are left in place, so the family refuses them as unknown
options. With hooks on they are taken out before the family parses the request:

- ``_test_kill_child: true``: the child SIGKILLs itself when the job starts (an OOM kill or
  a segfault, as far as the worker can tell).
- ``_test_memory_error: "normal"`` (or ``"always"``): the group the job runs in raises a
  real ``MemoryError`` (an allocation no machine can satisfy) when it runs in normal mode
  (or in any mode), before the family's code runs.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

KILL_HOOK = "_test_kill_child"
MEMORY_ERROR_HOOK = "_test_memory_error"
#: an allocation far past any address space: malloc refuses it at once, nothing is touched
_IMPOSSIBLE_BYTES = 1 << 62


@dataclass(frozen=True)
class TestHooks:
    """The hooks one job asked for."""

    __test__ = False  # not a pytest class

    kill_child: bool = False
    memory_error: str | None = None


def take_test_hooks(kwargs: dict[str, Any], enabled: bool) -> TestHooks:
    """Remove the hook kwargs from ``kwargs`` when hooks are enabled and say which were set."""
    if not enabled:
        return TestHooks()
    memory = kwargs.pop(MEMORY_ERROR_HOOK, None)
    return TestHooks(
        kill_child=bool(kwargs.pop(KILL_HOOK, False)),
        memory_error=str(memory) if memory else None,
    )


def kill_this_child(job_id: str) -> None:
    """The poison-job hook: die the way an OOM kill or a segfault would (no cleanup)."""
    log.warning("test hook: job %s kills child pid %d", job_id, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def raise_memory_error(hooks: Iterable[TestHooks], lightweight: bool) -> None:
    """A real MemoryError when a job of the group asked for one in this mode."""
    wanted = {h.memory_error for h in hooks}
    if "always" in wanted or ("normal" in wanted and not lightweight):
        log.warning(
            "test hook: provoking a MemoryError (%s mode)",
            "lightweight" if lightweight else "normal",
        )
        bytearray(_IMPOSSIBLE_BYTES)
