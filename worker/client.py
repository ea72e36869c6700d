"""A small Python client for apps: submit jobs with typed options, get a handle back.

Any other language can do the same with ``send_task``-compatible messages or Flower's REST
API; this module only saves Python apps from spelling task names and kwargs by hand, and
validates a request with the same model the worker uses before it is sent.

    from worker.client import MLClient
    client = MLClient("redis://localhost:6379/0")
    job = client.extract_tags("Celery workers batch requests for the embedder.", top_n=5)
    print(job.result(timeout=30)["tags"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from celery import Celery, chain, signature
from celery.result import AsyncResult

from config import Settings, get_settings
from worker import bulk
from worker.app import build_app
from worker.bulk import JOB_KEY, check_priority, check_same_request, claim_of, claim_ttl

# Celery rebuilds a failed job's exception from its stored module and type name, looking the
# module up in sys.modules only: this import is what gives an app the real worker.errors
# types (InvalidInput with .field), not stand-in classes whose str() is the args tuple.
from worker.errors import InvalidInput
from worker.families import load_families
from worker.family import TaskSpec, resolve

if TYPE_CHECKING:
    from worker.validation import RequestModel

__all__ = ["JOB_KEY", "PRIORITY_BULK", "PRIORITY_INTERACTIVE", "Job", "JobFailed", "MLClient"]

#: kombu's Redis transport serves 0 first, and a message sent without a priority counts as 0:
#: interactive jobs need no priority at all, so bulk work has to ask for a larger number
PRIORITY_INTERACTIVE = 0
#: what ``MLClient.map`` and ``--jsonl`` send with: behind every interactive job in the queue
PRIORITY_BULK = 9


class JobFailed(RuntimeError):
    """The job ended in FAILURE; ``exc_type`` and ``message`` say why.

    ``error`` is the job's exception as Celery rebuilt it (``worker.errors`` types for the
    jobs' own refusals, e.g. ``InvalidInput`` with ``.field``); it is also ``__cause__``.
    """

    def __init__(
        self, job_id: str, exc_type: str, message: str, error: BaseException | None = None
    ) -> None:
        super().__init__(f"job {job_id} failed: {exc_type}: {message}")
        self.job_id, self.exc_type, self.message = job_id, exc_type, message
        self.error = error


@dataclass
class Job:
    """Handle on a submitted job (a thin layer over Celery's AsyncResult)."""

    id: str
    task: str
    app: Celery
    resubmitted: bool = False
    #: the ids of the steps before this one when it ends a chain (``MLClient.chain``)
    previous: tuple[str, ...] = ()

    @property
    def async_result(self) -> AsyncResult:
        return AsyncResult(self.id, app=self.app)

    @property
    def state(self) -> str:
        return str(self.meta()["status"])

    def cancel(self, terminate: bool = False) -> None:
        """Revoke the job: a worker discards it unstarted (state REVOKED).

        ``terminate`` also stops it when already running (Celery's default SIGTERM to the
        child running it; a batched job's whole batch runs in that child). Revoking is a
        broadcast to the workers online now, who keep revoked ids in memory (Celery: at most
        50,000, for 3 hours); a worker started later, without ``--statedb``, does not know.
        """
        self.app.control.revoke(self.id, terminate=terminate)

    def meta(self) -> dict[str, Any]:
        """Raw backend record: status, result (or progress meta), traceback."""
        return dict(self.app.backend.get_task_meta(self.id))

    def progress(self) -> float | None:
        """Fraction done when the task reports PROGRESS, 1.0 when finished, else None."""
        meta = self.meta()
        if meta["status"] in ("SUCCESS", "FAILURE"):
            return 1.0
        info = meta.get("result")
        if isinstance(info, dict) and "fraction" in info:
            return float(info["fraction"])
        return None

    def phase(self) -> str | None:
        """The step a running job reports it is in (AutoML: loading, feature_engineering,
        model_search, scoring), else None."""
        meta = self.meta()
        info = meta.get("result") if meta["status"] == "PROGRESS" else None
        return str(info["phase"]) if isinstance(info, dict) and info.get("phase") else None

    def result(self, timeout: float | None = None, poll: float = 0.1) -> dict[str, Any]:
        """Wait for the result dict; raise ``JobFailed`` on failure (or when it was revoked),
        TimeoutError on timeout.

        ``async_result.get()`` raises the job's own exception type instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self.meta()
            if meta["status"] == "SUCCESS":
                return dict(meta["result"])
            if meta["status"] in ("FAILURE", "REVOKED"):
                exc = meta.get("result") or {}
                if isinstance(exc, dict):
                    raise JobFailed(self.id, str(exc.get("exc_type")), _message(exc))
                raise JobFailed(self.id, type(exc).__name__, str(exc), exc) from exc
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {meta['status']} after {timeout}s")
            time.sleep(poll)


def _message(exc: dict[str, Any]) -> str:
    args = exc.get("exc_message")
    if isinstance(args, list | tuple):
        return ": ".join(str(a) for a in args)
    return str(args)


def _job_failed(done: bulk.Finished) -> JobFailed:
    """The ``JobFailed`` a bulk job's FAILURE (or REVOKED) record stands for."""
    error = done.error
    name = type(error).__name__ if error is not None else done.state
    failed = JobFailed(done.job_id, name, str(error), error)
    failed.__cause__ = error
    return failed


class MLClient:
    """Submit mlworker jobs to the queues of one Redis.

    ``send(request)`` takes any registered family's request model (the model the worker
    validates with); each family also adds named helpers (``client.extract_tags(text)``,
    ``client.transcribe(path)``, ...) declared in its spec's ``client`` table.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        app: Celery | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:
            settings = get_settings() if redis_url is None else Settings(redis_url=redis_url)  # type: ignore[arg-type]
        self.families = load_families(settings)
        self.app = app if app is not None else build_app(settings, self.families)

    def submit(
        self,
        task: str,
        kwargs: dict[str, Any],
        job_id: str | None = None,
        priority: int | None = None,
    ) -> Job:
        """Send ``task`` with JSON ``kwargs``.

        ``priority`` is 0 (most urgent, and what a message without one counts as) to 9;
        send bulk work with ``PRIORITY_BULK`` so interactive jobs overtake it. Anything else
        raises ``InvalidInput("priority")`` before sending.

        ``job_id`` is an idempotency key: sent again with the same task and kwargs it
        returns the first job (``resubmitted=True``); reused for another task or other
        kwargs it raises ``InvalidInput("job_id")`` instead of answering with a result
        that belongs to a different request.
        """
        check_priority(priority)
        if job_id is not None:
            claim = claim_of(task, kwargs)
            with self.app.connection_for_write() as conn:
                client = conn.default_channel.client
                if not client.set(JOB_KEY + job_id, claim, nx=True, ex=claim_ttl(self.app)):
                    check_same_request(job_id, client.get(JOB_KEY + job_id), task, claim)
                    return Job(job_id, task, self.app, resubmitted=True)
        sent = self.app.send_task(task, kwargs=kwargs, task_id=job_id, priority=priority)
        job = Job(sent.id, task, self.app)
        # Job polls the backend; drop the AsyncResult now so its pub/sub subscription is
        # cancelled while Redis is surely up (its __del__ does that, and complains later).
        del sent
        return job

    def send(
        self, request: RequestModel, job_id: str | None = None, priority: int | None = None
    ) -> Job:
        """Send a validated request to the task whose request model it is."""
        task = self.families.task_of_request(type(request))
        return self.submit(task.name, request.to_kwargs(), job_id, priority)

    def chain(
        self,
        first: RequestModel,
        *then: tuple[str, dict[str, Any]],
        priority: int | None = None,
    ) -> Job:
        """Celery's ``chain``: ``first``, then each ``(task, kwargs)`` on the result before it
        (a tags step takes a transcript's ``text`` and ``language``; its own kwargs win).

        Returns the last step's job; ``Job.previous`` holds the earlier steps' ids.
        """
        check_priority(priority)
        first_task = self.families.task_of_request(type(first)).name
        steps = [signature(first_task, kwargs=first.to_kwargs(), app=self.app)]
        steps += [signature(task, kwargs=kwargs, app=self.app) for task, kwargs in then]
        last = chain(*steps).apply_async(priority=priority)
        ids: list[str] = []
        node = last.parent
        while node is not None:
            ids.insert(0, node.id)
            node = node.parent
        job = Job(last.id, then[-1][0] if then else first_task, self.app, previous=tuple(ids))
        del last, node
        return job

    def map(
        self,
        task: str,
        kwargs_list: Sequence[dict[str, Any]],
        *,
        job_ids: Sequence[str] | None = None,
        priority: int | None = PRIORITY_BULK,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``task`` on every kwargs; the result dicts in input order.

        Every request is validated with the task's model first, then all are sent through
        one producer and their results read with one MGET per poll (``worker.bulk``).

        Args:
            task: a registered task name (``tasks.extract_tags``).
            kwargs_list: one kwargs dict per job.
            job_ids: idempotency keys, one per job, as ``submit``'s ``job_id``.
            priority: 0..9; bulk by default, behind interactive jobs.
            timeout: seconds for all results; ``TimeoutError`` after.
            return_exceptions: like ``asyncio.gather``: a refused request's ``InvalidInput``
                or a failed job's ``JobFailed`` takes its place in the list. Without it a
                refused request raises before anything is sent, and the first failure seen
                raises (the other jobs still run).
        """
        check_priority(priority)
        model = self._task(task).request
        slots: list[Any] = []
        for kwargs in kwargs_list:
            try:
                slots.append(model.parse(kwargs).to_kwargs())
            except InvalidInput as exc:
                if not return_exceptions:
                    raise
                slots.append(exc)
        valid = [i for i, slot in enumerate(slots) if not isinstance(slot, InvalidInput)]
        ids = None if job_ids is None else [job_ids[i] for i in valid]
        submitted = bulk.submit_many(self.app, task, [slots[i] for i in valid], ids, priority)
        running: list[tuple[int, str]] = []
        for i, sent in zip(valid, submitted, strict=True):
            if isinstance(sent, InvalidInput):
                if not return_exceptions:
                    raise sent
                slots[i] = sent
            else:
                running.append((i, sent.job_id))
        for k, done in bulk.poll_many(self.app, [job_id for _, job_id in running], timeout):
            if done.state == "SUCCESS":
                slots[running[k][0]] = done.result
                continue
            failed = _job_failed(done)
            if not return_exceptions:
                raise failed
            slots[running[k][0]] = failed
        return slots

    def _task(self, name: str) -> TaskSpec:
        for task in self.families.tasks():
            if task.name == name:
                return task
        raise InvalidInput("task", f"{name!r} is not a registered task")

    def __getattr__(self, name: str) -> Callable[..., Job]:
        """A family's client helper, bound to this client (``client.extract_tags``)."""
        if name.startswith("_") or "families" not in self.__dict__:
            raise AttributeError(name)
        path = self.families.client_helper(name)
        if path is None:
            raise AttributeError(
                f"{type(self).__name__} has no attribute or family helper {name!r}"
            )
        return partial(resolve(path), self)
