"""What a family's task handler implements, and the types it exchanges with the runtime.

A handler is the thin adapter of a family: ``parse`` turns a message's JSON kwargs into a
typed item (raising ``InvalidInput`` naming the field), ``run`` turns items into outcomes
in the mode the runtime chose. The runtime does everything around it, the same way for
plain and batched tasks: admission, the memory verdict, the retry in lightweight mode after
a ``MemoryError``, isolating failures, storing results and the result envelope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from worker.errors import JobError
from worker.modes import Mode

if TYPE_CHECKING:
    from config import Settings
    from worker.memory import MemoryCheck

Item = TypeVar("Item")


@dataclass(frozen=True)
class RunMode:
    """The mode a group runs in and, for lightweight mode, why."""

    mode: Mode = "normal"
    reason: str = ""

    @property
    def lightweight(self) -> bool:
        return self.mode == "lightweight"

    @classmethod
    def from_check(cls, check: MemoryCheck) -> RunMode:
        """Lightweight when the memory guard's soft threshold is crossed, else normal."""
        if check.verdict == "lightweight":
            return cls("lightweight", f"memory guard: {check.reason}")
        return cls("normal")


NORMAL = RunMode()


@dataclass
class Produced:
    """One item's result payload, the registry model that produced it, and in which mode
    (a family may go lighter on its own, e.g. an AutoML plan that does not fit)."""

    payload: dict[str, Any]
    model: str
    mode: RunMode = NORMAL
    #: size and seconds of the group the item ran in (set by the runtime)
    batch: dict[str, Any] = field(default_factory=dict)


@dataclass
class Deferred:
    """The item's work was handed to other jobs (a long recording's chunks): its message is
    acked with no result stored, and what follows the job (its chain, links, callback) is
    kept so that ``worker.deferred.resume`` can send the job again, under the same id, to
    finish it. Batched tasks only."""

    reason: str = ""


#: what ``run`` returns per item: a result, a ``JobError`` that fails that item alone, a
#: ``MemoryError`` that sends that item to lightweight mode (in lightweight mode: fails it),
#: or ``Deferred`` (finished later, by a job it started)
Outcome = Produced | JobError | MemoryError | Deferred


class ProgressSink(Protocol):
    """Where a handler reports an item's progress; ``phase`` names the step it is in."""

    def __call__(self, index: int, fraction: float, phase: str | None = None) -> None: ...


def _keep_nothing(index: int) -> None:
    """``RunContext.deferring`` outside a worker: nothing to keep."""


@dataclass(frozen=True)
class RunContext:
    """Per-call facts for ``run``: the job ids of its items, settings, a progress sink."""

    job_ids: Sequence[str]
    settings: Settings
    #: ``progress(index, fraction[, phase])``: item ``index`` is ``fraction`` (0..1) done
    progress: ProgressSink
    #: the items' queues and priorities, as delivered (what jobs a handler starts inherit)
    queues: Sequence[str | None] = ()
    priorities: Sequence[int | None] = ()
    #: ``deferring(index)``: item ``index`` is about to start the jobs that finish it (it
    #: will return ``Deferred``); its message is kept now, not after the group, so that one
    #: of them ending before the group does can already send it again
    deferring: Callable[[int], None] = _keep_nothing


class Handler(Protocol[Item]):
    """A family's task adapter; instantiated once per worker process."""

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> Item:
        """Validated item for one message's kwargs; raises ``InvalidInput`` naming a field."""
        ...

    def run(self, items: Sequence[Item], mode: RunMode, context: RunContext) -> Sequence[Outcome]:
        """One outcome per item, in order, computed in ``mode``."""
        ...


class EndListener(Protocol):
    """A handler that also wants to hear of each job's end once it is stored (optional:
    ``ended(kwargs, result, error)``, the job's kwargs as delivered, exactly one of
    ``result`` and ``error`` set). Called in the child, after the result or failure is
    stored; the transcription family counts a long recording's finished chunks with it."""

    def ended(
        self, kwargs: dict[str, Any], result: dict[str, Any] | None, error: BaseException | None
    ) -> None: ...
