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

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.result import AsyncResult

from config import Settings, get_settings
from worker.app import build_app

# Celery rebuilds a failed job's exception from its stored module and type name, looking the
# module up in sys.modules only: this import is what gives an app the real worker.errors
# types (InvalidInput with .field), not stand-in classes whose str() is the args tuple.
from worker.errors import InvalidInput
from worker.families import load_families
from worker.family import resolve

if TYPE_CHECKING:
    from worker.validation import RequestModel

#: Redis key prefix marking an app-supplied job id as taken (idempotent resubmits)
JOB_KEY = "mlworker:job:"


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

    @property
    def async_result(self) -> AsyncResult:
        return AsyncResult(self.id, app=self.app)

    @property
    def state(self) -> str:
        return str(self.meta()["status"])

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
        """Wait for the result dict; raise ``JobFailed`` on failure, TimeoutError on timeout.

        ``async_result.get()`` raises the job's own exception type instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self.meta()
            if meta["status"] == "SUCCESS":
                return dict(meta["result"])
            if meta["status"] == "FAILURE":
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


def _claim(task: str, kwargs: dict[str, Any]) -> str:
    """What a job id is bound to: the task and a digest of its kwargs."""
    digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode())
    return f"{task} {digest.hexdigest()}"


def _check_same_request(job_id: str, stored: bytes | None, task: str, claim: str) -> None:
    if stored is None:  # expired between SET NX and GET: the id is free again, a race
        return
    held = stored.decode(errors="replace")
    held_task = held.split(" ", 1)[0]
    if held_task != task:
        raise InvalidInput("job_id", f"{job_id!r} is already the id of a {held_task} job")
    if " " in held and held != claim:
        raise InvalidInput("job_id", f"{job_id!r} was already sent with other kwargs")


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

    def submit(self, task: str, kwargs: dict[str, Any], job_id: str | None = None) -> Job:
        """Send ``task`` with JSON ``kwargs``.

        ``job_id`` is an idempotency key: sent again with the same task and kwargs it
        returns the first job (``resubmitted=True``); reused for another task or other
        kwargs it raises ``InvalidInput("job_id")`` instead of answering with a result
        that belongs to a different request.
        """
        if job_id is not None:
            expires = self.app.conf.result_expires
            ttl = int(getattr(expires, "total_seconds", lambda: expires)())
            claim = _claim(task, kwargs)
            with self.app.connection_for_write() as conn:
                client = conn.default_channel.client
                if not client.set(JOB_KEY + job_id, claim, nx=True, ex=ttl):
                    _check_same_request(job_id, client.get(JOB_KEY + job_id), task, claim)
                    return Job(job_id, task, self.app, resubmitted=True)
        sent = self.app.send_task(task, kwargs=kwargs, task_id=job_id)
        job = Job(sent.id, task, self.app)
        # Job polls the backend; drop the AsyncResult now so its pub/sub subscription is
        # cancelled while Redis is surely up (its __del__ does that, and complains later).
        del sent
        return job

    def send(self, request: RequestModel, job_id: str | None = None) -> Job:
        """Send a validated request to the task whose request model it is."""
        task = self.families.task_of_request(type(request))
        return self.submit(task.name, request.to_kwargs(), job_id)

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
