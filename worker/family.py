"""What a job family declares about itself, and the collection the runtime iterates over.

A family lives in ``tasks/<family>/`` and describes itself once, in a ``FamilySpec``: its
queue, its tasks (name, handler, request model, time limit, batching), the models a worker
of its queue preloads, what its lightweight mode does, and its client and CLI entries. The
runtime (app, worker entry, CLI, client, metrics) only ever reads specs; it never spells a
queue or task name. Handlers, loaders and CLI commands are named by ``"module:attribute"``
so that reading a spec imports no ML library: a client or a tags worker never pays for
faster-whisper.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from config import Settings
    from worker.validation import RequestModel

#: the queue jobs go to after too many deliveries (not a family's: every family uses it)
DEAD_LETTER_QUEUE = "dead_letter"
#: Celery's default queue: where a client without mlworker's routes sends every task.
#: Workers consume it too and pass each job on to its family's queue (``worker.guard``).
UNROUTED_QUEUE = "celery"


def resolve(path: str) -> Any:
    """The object a ``"package.module:attribute"`` path names (imported on first use)."""
    module, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"{path!r} is not of the form 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class BatchSpec:
    """Batching knobs of a batched task, read from settings when the worker builds it."""

    #: most requests run as one call (the memory guard halves it under pressure)
    size: Callable[[Settings], int]
    #: longest a buffered request waits for batch-mates
    flush_interval_s: Callable[[Settings], float]


@dataclass(frozen=True)
class TaskSpec:
    """One Celery task of a family."""

    name: str
    #: ``"module:Class"`` of the handler (parse kwargs, run items in a mode); workers only
    handler: str
    #: the pydantic model of the task's JSON kwargs (the client validates with it too)
    request: type[RequestModel]
    time_limit_s: Callable[[Settings], int]
    #: None: a plain task, one message per run
    batch: BatchSpec | None = None
    #: ``"module:function"`` turning the previous task's result (a chain's or a link's
    #: positional argument) into kwargs; the task's own kwargs win. None: no such argument
    chain_input: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model in the per-process registry: its name and ``"module:function"`` loader."""

    name: str
    loader: str
    #: loaded when a child of this family's queue starts (False: on first use only)
    preload: bool = True


@dataclass(frozen=True)
class FamilySpec:
    """Everything the runtime knows about one job family."""

    #: the family's folder name, for people (``transcription``)
    name: str
    #: the queue its tasks are routed to; also the ``family`` label of metrics and logs
    queue: str
    tasks: tuple[TaskSpec, ...]
    models: tuple[ModelSpec, ...] = ()
    #: one sentence: what the lightweight mode does differently
    lightweight: str = ""
    #: client helper name -> ``"module:function"`` taking (client, ...) and returning a Job
    client: Mapping[str, str] = field(default_factory=dict)
    #: ``"module:function"`` adding the family's CLI commands to ``mlworker``'s groups
    #: (``{"submit": ..., "models": ...}``), e.g. ``mlworker submit <queue>``
    cli: str | None = None
    #: ``"module:function"`` of ``(client, input_root) -> {label: Job}`` for ``mlworker demo``
    demo: str | None = None

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise KeyError(f"family {self.name} has no task {name!r}")


class Families(Sequence[FamilySpec]):
    """The registered families, in registration order, with the lookups the runtime needs."""

    def __init__(self, specs: Iterable[FamilySpec]) -> None:
        self._specs = tuple(specs)
        self._by_queue: dict[str, FamilySpec] = {}
        self._by_task: dict[str, FamilySpec] = {}
        for spec in self._specs:
            if spec.queue in self._by_queue or spec.queue == DEAD_LETTER_QUEUE:
                raise ValueError(f"queue {spec.queue!r} is declared twice")
            self._by_queue[spec.queue] = spec
            for task in spec.tasks:
                if task.name in self._by_task:
                    raise ValueError(f"task {task.name!r} is declared twice")
                self._by_task[task.name] = spec

    def __getitem__(self, index: int) -> FamilySpec:  # type: ignore[override]
        return self._specs[index]

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def queues(self) -> tuple[str, ...]:
        """Every family queue, in registration order (the dead-letter queue excluded)."""
        return tuple(self._by_queue)

    def routes(self) -> dict[str, str]:
        """Task name -> queue, for Celery's ``task_routes``."""
        return {name: spec.queue for name, spec in self._by_task.items()}

    def tasks(self) -> list[TaskSpec]:
        return [task for spec in self._specs for task in spec.tasks]

    def of_task(self, name: str) -> FamilySpec | None:
        return self._by_task.get(name)

    def of_queue(self, queue: str) -> FamilySpec | None:
        return self._by_queue.get(queue)

    def consuming(self, queues: Iterable[str] | None) -> list[FamilySpec]:
        """Families a worker of ``queues`` runs; all of them when unset or none is known."""
        chosen = [self._by_queue[q] for q in (queues or ()) if q in self._by_queue]
        return chosen or list(self._specs)

    def models(self) -> list[ModelSpec]:
        return [model for spec in self._specs for model in spec.models]

    def task_of_request(self, model: type[RequestModel]) -> TaskSpec:
        """The task whose kwargs ``model`` describes."""
        for task in self.tasks():
            if task.request is model:
                return task
        raise KeyError(f"no registered task takes {model.__name__}")

    def client_helper(self, name: str) -> str | None:
        for spec in self._specs:
            if name in spec.client:
                return spec.client[name]
        return None

    def prefetch(self, queues: Iterable[str], settings: Settings) -> int:
        """Messages a child reserves: ``batch_prefetch`` batches for a batched task, else one."""
        wanted = [1]
        for spec in self.consuming(queues):
            wanted += [
                settings.batch_prefetch * task.batch.size(settings)
                for task in spec.tasks
                if task.batch
            ]
        return max(wanted)
