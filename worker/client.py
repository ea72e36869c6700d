"""A small Python client for apps: submit jobs with typed options, get a handle back.

Any other language can do the same with ``send_task``-compatible messages or Flower's REST
API; this module only saves Python apps from spelling task names and kwargs by hand.

    from worker.client import MLClient
    client = MLClient("redis://localhost:6379/0")
    job = client.extract_tags("Celery workers batch requests for the embedder.", top_n=5)
    print(job.result(timeout=30)["tags"])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from config import Settings, get_settings
from worker.app import build_app

#: Redis key prefix marking an app-supplied job id as taken (idempotent resubmits)
JOB_KEY = "mlworker:job:"


class JobFailed(RuntimeError):
    """The job ended in FAILURE; ``exc_type`` and ``message`` say why."""

    def __init__(self, job_id: str, exc_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {exc_type}: {message}")
        self.job_id, self.exc_type, self.message = job_id, exc_type, message


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

    def result(self, timeout: float | None = None, poll: float = 0.1) -> dict[str, Any]:
        """Wait for the result dict; raise ``JobFailed`` on failure, TimeoutError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self.meta()
            if meta["status"] == "SUCCESS":
                return dict(meta["result"])
            if meta["status"] == "FAILURE":
                exc = meta.get("result") or {}
                if isinstance(exc, dict):
                    raise JobFailed(self.id, str(exc.get("exc_type")), _message(exc))
                raise JobFailed(self.id, type(exc).__name__, str(exc))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {meta['status']} after {timeout}s")
            time.sleep(poll)


def _message(exc: dict[str, Any]) -> str:
    args = exc.get("exc_message")
    if isinstance(args, list | tuple):
        return ": ".join(str(a) for a in args)
    return str(args)


class MLClient:
    """Submit mlworker jobs to the queues of one Redis."""

    def __init__(self, redis_url: str | None = None, app: Celery | None = None) -> None:
        if app is None:
            settings = get_settings() if redis_url is None else Settings(redis_url=redis_url)  # type: ignore[arg-type]
            app = build_app(settings)
        self.app = app

    def submit(self, task: str, kwargs: dict[str, Any], job_id: str | None = None) -> Job:
        """Send ``task`` with JSON ``kwargs``. A ``job_id`` seen before returns that job."""
        if job_id is not None:
            expires = self.app.conf.result_expires
            ttl = int(getattr(expires, "total_seconds", lambda: expires)())
            with self.app.connection_for_write() as conn:
                client = conn.default_channel.client
                if not client.set(JOB_KEY + job_id, task, nx=True, ex=ttl):
                    return Job(job_id, task, self.app, resubmitted=True)
        sent = self.app.send_task(task, kwargs=kwargs, task_id=job_id)
        job = Job(sent.id, task, self.app)
        # Job polls the backend; drop the AsyncResult now so its pub/sub subscription is
        # cancelled while Redis is surely up (its __del__ does that, and complains later).
        del sent
        return job

    def transcribe(
        self,
        audio_path: str | None = None,
        *,
        audio_b64: str | None = None,
        language: str | None = None,
        task: str = "transcribe",
        beam_size: int | None = None,
        vad_filter: bool = True,
        word_timestamps: bool = False,
        output_formats: list[str] | None = None,
        job_id: str | None = None,
        **options: Any,
    ) -> Job:
        """Transcribe a file under the input root (``audio_path``) or inline base64 audio."""
        kwargs: dict[str, Any] = {
            "language": language,
            "task": task,
            "vad_filter": vad_filter,
            "word_timestamps": word_timestamps,
            **options,
        }
        if audio_path is not None:
            kwargs["audio_path"] = audio_path
        if audio_b64 is not None:
            kwargs["audio_b64"] = audio_b64
        if beam_size is not None:
            kwargs["beam_size"] = beam_size
        if output_formats is not None:
            kwargs["output_formats"] = output_formats
        return self.submit("tasks.transcribe", kwargs, job_id)

    def extract_tags(
        self,
        text: str,
        top_n: int = 5,
        *,
        language: str = "auto",
        job_id: str | None = None,
        **options: Any,
    ) -> Job:
        """Extract ``top_n`` keyphrases from one document."""
        kwargs = {"text": text, "top_n": top_n, "language": language, **options}
        return self.submit("tasks.extract_tags", kwargs, job_id)

    def automl(
        self, data_path: str, target: str, *, job_id: str | None = None, **options: Any
    ) -> Job:
        """Train on a CSV/Parquet file under the input root, predicting column ``target``."""
        kwargs = {"data_path": data_path, "target": target, **options}
        return self.submit("tasks.automl", kwargs, job_id)
