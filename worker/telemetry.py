"""Per-job observation in worker children: one log line per job and the metrics it feeds.

Connected to Celery signals by ``install`` (the worker entry's hooks, ``worker.lifecycle``).
``task_postrun`` fires once per plain job and once per celery-batches flush; for a flush the
per-request outcome and mode are read back from the result store in one ``MGET``, so every
batched request still gets its own log line and metrics. A task's ``family`` attribute
(set by the runtime from its family's spec) is the ``family`` label. Nothing here may fail
a job: errors are logged and dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from celery import signals
from celery_batches import Batches

from config import get_settings
from worker.metrics import (
    BATCH_FLUSHES,
    BATCH_SIZE,
    GUARD_REFUSALS,
    JOB_DURATION,
    JOBS,
    LIGHTWEIGHT_JOBS,
    MODEL_LOAD,
    PROCESS_HEARTBEAT_S,
    MetricsStore,
    Observation,
)
from worker.registry import registry
from worker.results import ResultStore

log = logging.getLogger(__name__)
#: the logger of the one-line-per-job record (its fields travel as LogRecord extras)
job_log = logging.getLogger("mlworker.jobs")
MB = 1024 * 1024
#: the exception a memory-guard refusal fails a job with (worker.errors.InsufficientMemory)
REFUSAL = "InsufficientMemory"


@dataclass(frozen=True)
class JobRecord:
    """What one finished job reports: to the log and to the metrics."""

    job_id: str
    task: str
    family: str
    mode: str
    state: str
    duration_s: float
    exc_type: str | None = None

    def observations(self) -> list[Observation]:
        outcome = "success" if self.state == "SUCCESS" else "failure"
        found = [
            Observation(JOB_DURATION, (self.family, self.mode), self.duration_s),
            Observation(JOBS, (self.family, self.mode, outcome)),
        ]
        if self.mode == "lightweight":
            found.append(Observation(LIGHTWEIGHT_JOBS, (self.family,)))
        if self.exc_type == REFUSAL:
            found.append(Observation(GUARD_REFUSALS, (self.family,)))
        return found


class _ProcessState:
    """Per-child state: start times, the metrics store, models already counted."""

    def __init__(self) -> None:
        self.pid = -1
        self.started: dict[str, float] = {}
        self.store: MetricsStore | None = None
        self.loads_seen: dict[str, int] = {}
        self.node = ""
        self.queues: list[str] = []

    def metrics_store(self) -> MetricsStore | None:
        """The store for this process (a forked child opens its own connection)."""
        if self.pid != os.getpid():
            self.pid, self.store, self.started, self.loads_seen = os.getpid(), None, {}, {}
            settings = get_settings()
            url = settings.broker_url()
            if settings.metrics_enabled and url:
                self.store = MetricsStore.from_url(url)
        return self.store


_child = _ProcessState()


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _mode_of(result: Any) -> str:
    if isinstance(result, dict) and isinstance(result.get("mode"), str):
        return str(result["mode"])
    return "none"


def _batch_records(
    task: Batches, family: str, requests: Sequence[Any], elapsed: float
) -> list[JobRecord]:
    """One record per batched request, from the results ``IsolatedBatches`` stored."""
    stored = ResultStore(task.backend).records([r.id for r in requests])
    records = []
    for request, record in zip(requests, stored, strict=True):
        meta = record or {"status": "UNKNOWN"}
        if meta.get("status") in _NOT_FINISHED:
            continue  # requeued by the memory guard: it finishes in a later run
        status, result = str(meta.get("status")), meta.get("result")
        if status == "SUCCESS" and isinstance(result, dict):
            batch = result.get("batch") or {}
            duration = float(result.get("elapsed_s") or batch.get("elapsed_s") or elapsed)
            records.append(
                JobRecord(request.id, task.name, family, _mode_of(result), status, duration)
            )
            continue
        exc_type = result.get("exc_type") if isinstance(result, dict) else None
        records.append(JobRecord(request.id, task.name, family, "none", status, elapsed, exc_type))
    return records


def _model_loads() -> list[Observation]:
    """Model loads in this child since the last look (preload or a lazy first ``get``)."""
    found = []
    for name, info in registry.snapshot().items():
        loads = int(info.get("loads_in_process") or 0)
        if loads > _child.loads_seen.get(name, 0):
            found.append(Observation(MODEL_LOAD, (name,), float(info["load_seconds"])))
        _child.loads_seen[name] = loads
    return found


#: what a handler adds to each report: observations since its last call, heartbeat fields
Reporter = Callable[[], tuple[list[Observation], dict[str, str]]]
_reporters: list[Reporter] = []


def add_reporter(reporter: Reporter) -> None:
    """Have ``reporter`` add to every report this process sends (a handler's own metrics)."""
    _reporters.append(reporter)


def _reported() -> tuple[list[Observation], dict[str, str]]:
    observations: list[Observation] = []
    fields: dict[str, str] = {}
    for reporter in _reporters:
        more, found = reporter()
        observations += more
        fields.update(found)
    return observations, fields


def _report(records: list[JobRecord], extra: list[Observation]) -> None:
    """Log each job and record its metrics; a dead Redis costs a log line, not the job."""
    rss = _rss()
    for record in records:
        job_log.info(
            "job %s %s family=%s mode=%s state=%s duration_s=%.3f rss_mb=%.0f",
            record.job_id, record.task, record.family, record.mode, record.state,
            record.duration_s, rss / MB,
            extra={"job_id": record.job_id, "task": record.task, "family": record.family,
                   "mode": record.mode, "state": record.state,
                   "duration_s": round(record.duration_s, 4), "rss_mb": round(rss / MB, 1)},
        )  # fmt: skip
    store = _child.metrics_store()
    if store is None:
        return
    try:
        more, fields = _reported()
        store.record([obs for r in records for obs in r.observations()] + extra + more)
        store.heartbeat(_child.node, _child.queues, registry.loaded_names(), rss, fields)
    except Exception as exc:  # noqa: BLE001 - metrics must never fail a job
        log.warning("metrics not recorded: %r", exc)


def _job_started(task_id: str, **_: Any) -> None:
    _child.metrics_store()  # resets per-process state in a fresh child
    _child.started[task_id] = time.perf_counter()


#: states a plain job ends a run in without finishing (requeued, or acknowledged unrun)
_NOT_FINISHED = frozenset({"RETRY", "IGNORED"})


def _job_finished(
    task_id: str, task: Any, args: Any, retval: Any = None, state: str = "", **_: Any
) -> None:
    started = _child.started.pop(task_id, None)
    elapsed = time.perf_counter() - started if started is not None else 0.0
    family = getattr(task, "family", "")
    if not family:
        return
    try:
        extra = _model_loads()
        if isinstance(task, Batches):
            requests = list(args[0]) if args else []
            records = _batch_records(task, family, requests, elapsed)
            reason = "full" if len(requests) >= task.flush_every else "interval"
            extra += [
                Observation(BATCH_SIZE, (family,), float(len(requests))),
                Observation(BATCH_FLUSHES, (family, reason)),
            ]
        elif state in _NOT_FINISHED:
            records = []
        else:
            exc_type = type(retval).__name__ if isinstance(retval, BaseException) else None
            records = [
                JobRecord(task_id, task.name, family, _mode_of(retval), state, elapsed, exc_type)
            ]
        _report(records, extra)
    except Exception as exc:  # noqa: BLE001 - observing a job must never fail it
        log.warning("job %s not observed: %r", task_id, exc)


def _remember_node(sender: str, **_: Any) -> None:
    """The node name (``tags-ab12cd@host``), set in the parent, inherited by children."""
    _child.node = str(sender)


def _child_ready(**_: Any) -> None:
    """After preload (connected after the preload hook): count loads, heartbeat."""
    store = _child.metrics_store()
    if store is None:
        return
    _report([], _model_loads())
    threading.Thread(target=_heartbeat_forever, args=(store,), daemon=True).start()


def _heartbeat_forever(store: MetricsStore) -> None:
    """Keep this child's RSS key alive while it idles (it expires a minute after death)."""
    while True:
        time.sleep(PROCESS_HEARTBEAT_S)
        try:
            store.heartbeat(_child.node, _child.queues, registry.loaded_names(), _rss())
        except Exception as exc:  # noqa: BLE001 - keep beating through a Redis restart
            log.debug("heartbeat failed: %r", exc)


def _child_exit(**_: Any) -> None:
    store = _child.metrics_store()
    if store is not None:
        try:
            store.forget_process()
        except Exception as exc:  # noqa: BLE001 - the key expires anyway
            log.debug("process key not removed: %r", exc)


def install(queues: Iterable[str]) -> None:
    """Observe this worker's jobs; connect after the preload hook (``worker.lifecycle``)."""
    _child.queues = sorted(queues)
    uid = "mlworker-telemetry-"
    signals.task_prerun.connect(_job_started, dispatch_uid=uid + "prerun")
    signals.task_postrun.connect(_job_finished, dispatch_uid=uid + "postrun")
    signals.celeryd_after_setup.connect(_remember_node, dispatch_uid=uid + "node")
    signals.worker_process_init.connect(_child_ready, dispatch_uid=uid + "child")
    signals.worker_process_shutdown.connect(_child_exit, dispatch_uid=uid + "exit")
