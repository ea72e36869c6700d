"""Run delivered jobs through a family's handler: the one path plain and batched tasks share.

For a list of tickets (one for a plain task, a flushed buffer for a batched one):

1. admission screens them (``worker.admission``): memory refusal, already finished;
2. each admitted job's kwargs are parsed by the handler (a bad one fails alone);
3. first-time jobs run in groups of at most the batch size (halved under memory pressure),
   jobs started before run alone; each start is counted (dead-letter past the limit);
4. a group runs in the mode the memory guard's reading chose; what raises ``MemoryError`` in
   normal mode runs once more in lightweight mode; failures are narrowed to their item
   (``worker.isolation``);
5. each job's outcome goes to a ``Sink``: the batched task stores it, the plain task
   returns or raises it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol

from celery import Celery

from config import Settings
from worker import deferred, webhooks
from worker.admission import Action, Gate, Ticket
from worker.delivery import DeadLettered, forget_starts
from worker.errors import InsufficientMemory, InvalidInput
from worker.handler import Deferred, Handler, Item, Outcome, Produced, RunContext, RunMode
from worker.isolation import run_isolated
from worker.memory import MemoryGuard, collect_garbage
from worker.registry import registry
from worker.results import ResultStore
from worker.test_hooks import TestHooks, kill_this_child, raise_memory_error, take_test_hooks

log = logging.getLogger(__name__)

#: a job reports progress at most once per this share of its work (one Redis write each)
PROGRESS_STEP = 0.05


#: a task's ``TaskSpec.chain_input``: the previous result of a chain or link -> kwargs
ChainInput = Callable[[Any], dict[str, Any]]


class Sink(Protocol):
    """Where the executor puts each job's end: stored (batched) or returned (plain)."""

    def successes(self, ended: Sequence[tuple[Ticket, dict[str, Any]]]) -> None:
        """The jobs of one model call that succeeded, in one go (a batched sink stores them
        in one round trip)."""

    def failure(self, ticket: Ticket, exc: BaseException) -> None: ...

    def requeued(self, ticket: Ticket) -> None: ...

    def skipped(self, ticket: Ticket) -> None: ...


@dataclass
class _Admitted(Generic[Item]):
    ticket: Ticket
    item: Item
    hooks: TestHooks


class Executor(Generic[Item]):
    """Admission, modes, fallback and isolation around one task's handler."""

    def __init__(
        self,
        app: Celery,
        handler: Handler[Item],
        settings: Settings,
        *,
        batched: bool,
        guard: MemoryGuard | None = None,
        chain_input: ChainInput | None = None,
    ) -> None:
        self.handler = handler
        self.chain_input = chain_input
        self.settings = settings
        self.batched = batched
        self.guard = guard or MemoryGuard(settings)
        self.gate = Gate(app, settings, self.guard)
        self.store = ResultStore(app.backend)
        #: ids of jobs whose message was kept while they ran (``RunContext.deferring``)
        self._kept: set[str] = set()

    def execute(self, tickets: Sequence[Ticket], batch_size: int, sink: Sink) -> None:
        """Admit, parse and run ``tickets``; every ticket ends in exactly one ``sink`` call."""
        sink = webhooks.RecordingSink(sink, self.store.backend.client, self.settings)
        if callable(getattr(self.handler, "ended", None)):
            sink = _TellHandler(sink, self.handler, self.store)
        check, decisions = self.gate.screen(tickets)
        mode = RunMode.from_check(check)
        fresh: list[_Admitted[Item]] = []
        suspects: list[_Admitted[Item]] = []
        for ticket, decision in zip(tickets, decisions, strict=True):
            if decision.action is Action.REQUEUE:
                self.gate.requeue(ticket, decision.reason)
                sink.requeued(ticket)
            elif decision.action is Action.FAIL:
                sink.failure(ticket, InsufficientMemory(decision.reason))
            elif decision.action is Action.SKIP:
                log.info("job %s already has its result; not run again", ticket.id)
                sink.skipped(ticket)
            else:
                admitted = self._parse(ticket, sink)
                if admitted is not None:
                    (suspects if decision.suspect else fresh).append(admitted)
        limit = check.batch_cap(batch_size)  # the same reading that chose the mode
        groups = [fresh[i : i + limit] for i in range(0, len(fresh), limit)]
        for group in [*groups, *([s] for s in suspects)]:
            self._start_group(group, mode, sink)

    def _parse(self, ticket: Ticket, sink: Sink) -> _Admitted[Item] | None:
        kwargs = dict(ticket.kwargs)
        hooks = take_test_hooks(kwargs, self.settings.test_hooks)
        try:
            webhooks.pop_callback(kwargs, self.settings)
        except InvalidInput as exc:
            sink.failure(ticket, exc)
            return None
        try:
            if ticket.args:
                kwargs = {**self._previous(ticket.args), **kwargs}
            item = self.handler.parse(kwargs, self.settings)
        except Exception as exc:  # noqa: BLE001 - a bad request fails alone
            sink.failure(ticket, exc)
            return None
        return _Admitted(ticket, item, hooks)

    def _previous(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """The kwargs a chain's previous result gives this task (its only positional arg)."""
        if self.chain_input is None:
            raise InvalidInput("args", "positional arguments are not accepted; send kwargs")
        if len(args) != 1:
            raise InvalidInput("args", f"takes one previous result, got {len(args)} arguments")
        return self.chain_input(args[0])

    def _start_group(self, group: list[_Admitted[Item]], mode: RunMode, sink: Sink) -> None:
        """Count each start (dead-lettering the exhausted), run the rest, hand out outcomes."""
        admitted = []
        for job in group:
            decision = self.gate.start(job.ticket)
            if decision.action is Action.DEAD_LETTER:
                sink.failure(job.ticket, DeadLettered("delivery", decision.reason))
            else:
                admitted.append(job)
        for job in admitted:
            if job.hooks.kill_child:
                kill_this_child(job.ticket.id)
        try:
            started = time.perf_counter()
            outcomes = run_isolated(admitted, lambda sub: self._attempt(sub, mode))
            produced = [
                (job.ticket, self._envelope(outcome, started))
                for job, outcome in zip(admitted, outcomes, strict=True)
                if isinstance(outcome, Produced)
            ]
            if produced:
                sink.successes(produced)
            for job, outcome in zip(admitted, outcomes, strict=True):
                if isinstance(outcome, Deferred):
                    self._defer(job.ticket, outcome, sink)
                elif isinstance(outcome, MemoryError):
                    sink.failure(job.ticket, _out_of_memory(outcome))
                elif isinstance(outcome, BaseException):
                    sink.failure(job.ticket, outcome)
        finally:  # kept for this run only, whatever ends it
            self._kept.difference_update(job.ticket.id for job in admitted)
        self.guard.job_done(len(admitted))  # one gc check per group: a full gc costs ~0.1-0.3 s

    def _keep(self, ticket: Ticket) -> None:
        """Keep how to send ``ticket``'s job again (``worker.deferred``), once per run."""
        if self.batched and ticket.id not in self._kept:
            ttl = int(self.settings.result_expires_s) if self.settings.result_expires_s else 86400
            deferred.keep(self.store.backend.client, ticket, ttl)
            self._kept.add(ticket.id)

    def _defer(self, ticket: Ticket, outcome: Deferred, sink: Sink) -> None:
        """Ack the job without a result; keep how to send it again (``worker.deferred``)
        unless it was kept while it ran."""
        if not self.batched:
            sink.failure(ticket, RuntimeError("only a batched task's job can be deferred"))
            return
        self._keep(ticket)
        forget_starts(self.store.backend.client, ticket.id)  # its resumed run starts afresh
        log.info("job %s deferred: %s", ticket.id, outcome.reason)
        sink.skipped(ticket)

    def _attempt(self, group: Sequence[_Admitted[Item]], mode: RunMode) -> list[Outcome]:
        """``group`` in ``mode``; what ran out of memory in normal mode, once more light."""
        outcomes = self._call(group, mode)
        short = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, MemoryError)]
        if short and not mode.lightweight:
            exc = outcomes[short[0]]
            light = RunMode("lightweight", f"MemoryError in normal mode: {exc or 'no memory'}")
            log.warning(
                "%s; retrying %d of %d in lightweight mode", light.reason, len(short), len(group)
            )
            collect_garbage()
            retried = self._call([group[i] for i in short], light)
            for index, outcome in zip(short, retried, strict=True):
                outcomes[index] = outcome
        return outcomes

    def _call(self, group: Sequence[_Admitted[Item]], mode: RunMode) -> list[Outcome]:
        """One handler call; a MemoryError anywhere in it is every item's outcome."""
        started = time.perf_counter()
        context = RunContext(
            job_ids=[job.ticket.id for job in group],
            settings=self.settings,
            progress=_Progress(self.store, [job.ticket.id for job in group]),
            queues=[job.ticket.queue for job in group],
            priorities=[job.ticket.priority for job in group],
            deferring=lambda index: self._keep(group[index].ticket),
        )
        try:
            raise_memory_error((job.hooks for job in group), mode.lightweight)
            outcomes = list(self.handler.run([job.item for job in group], mode, context))
        except MemoryError as exc:
            return [exc] * len(group)
        if len(outcomes) != len(group):
            raise RuntimeError(f"handler returned {len(outcomes)} outcomes for {len(group)}")
        elapsed = round(time.perf_counter() - started, 4)
        for outcome in outcomes:
            if isinstance(outcome, Produced):
                outcome.batch = {"size": len(group), "elapsed_s": elapsed}
        return outcomes

    def _envelope(self, produced: Produced, started: float) -> dict[str, Any]:
        result = envelope(
            produced.payload,
            model_name=produced.model,
            mode=produced.mode,
            started=started,
        )
        if self.batched:
            result.setdefault("batch", produced.batch)
        return result


class _TellHandler:
    """A sink that tells the handler (``EndListener``) of each job's stored end: a job
    skipped because its result is stored already is told again with that result (its
    child may have died between storing it and telling)."""

    def __init__(self, sink: Sink, handler: Any, store: ResultStore) -> None:
        self.sink = sink
        self.handler = handler
        self.store = store

    def successes(self, ended: Sequence[tuple[Ticket, dict[str, Any]]]) -> None:
        self.sink.successes(ended)  # stored first: the last chunk's stitch reads them
        for ticket, result in ended:
            self._tell(ticket, result, None)

    def failure(self, ticket: Ticket, exc: BaseException) -> None:
        self.sink.failure(ticket, exc)
        self._tell(ticket, None, exc)

    def requeued(self, ticket: Ticket) -> None:
        self.sink.requeued(ticket)

    def skipped(self, ticket: Ticket) -> None:
        self.sink.skipped(ticket)
        meta = self.store.backend.get_task_meta(ticket.id)
        if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
            self._tell(ticket, meta["result"], None)

    def _tell(
        self, ticket: Ticket, result: dict[str, Any] | None, error: BaseException | None
    ) -> None:
        try:
            self.handler.ended(dict(ticket.kwargs), result, error)
        except Exception as exc:  # noqa: BLE001 - the job's end is stored already
            log.error("after job %s: %r", ticket.id, exc, exc_info=exc)


def _out_of_memory(exc: MemoryError) -> InsufficientMemory:
    return InsufficientMemory(f"out of memory even in lightweight mode: {exc or 'no memory'}")


class _Progress:
    """PROGRESS records for a group's jobs, at most one per ``PROGRESS_STEP`` of a job or
    change of its phase (``{"fraction": 0..1, "phase": name}``, phase when the family has one)."""

    def __init__(self, store: ResultStore, job_ids: Sequence[str]) -> None:
        self.store = store
        self.job_ids = list(job_ids)
        self.last: dict[int, float] = {}

        self.phases: dict[int, str] = {}

    def __call__(self, index: int, fraction: float, phase: str | None = None) -> None:
        moved = fraction - self.last.get(index, -1.0) >= PROGRESS_STEP or fraction >= 1.0
        if moved or (phase is not None and phase != self.phases.get(index)):
            self.last[index] = fraction
            meta: dict[str, Any] = {"fraction": round(fraction, 3)}
            if phase is not None:
                self.phases[index] = phase
                meta["phase"] = phase
            self.store.progress(self.job_ids[index], meta)


def envelope(
    payload: dict[str, Any], *, model_name: str, mode: RunMode, started: float | None = None
) -> dict[str, Any]:
    """Stamp a family's result with what produced it: model, backend, mode, worker, time."""
    model = registry.describe(model_name)
    payload.update(
        model=model,
        backend=model.get("backend"),
        mode=mode.mode,
        mode_reason=mode.reason or None,
        worker={"hostname": socket.gethostname(), "pid": os.getpid()},
    )
    if started is not None:
        payload["elapsed_s"] = round(time.perf_counter() - started, 4)
    return payload
