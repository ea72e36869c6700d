"""A family the tests define (``tests/echo_family``) runs like a built-in one.

Registered only through ``MLWORKER_EXTRA_FAMILIES``: real workers (``mlworker worker`` and
``celery -A worker.app:app worker``) on the session's real Redis run it batched and plain,
with the runtime's admission, lightweight retry after a real MemoryError, and isolation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from config import Settings
from tests.echo_family.options import EchoRequest
from tests.support import WorkerProcess
from worker.client import MLClient
from worker.errors import InsufficientMemory, InvalidInput
from worker.test_hooks import MEMORY_ERROR_HOOK

FAMILY = "tests.echo_family.family:FAMILY"
ENV = {"MLWORKER_EXTRA_FAMILIES": FAMILY, "MLWORKER_TEST_HOOKS": "1"}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker("echo", **ENV)


def _send(app: Celery, task: str, **kwargs: Any) -> AsyncResult:
    return app.send_task(task, kwargs=kwargs, queue="echo")


def _results(jobs: list[AsyncResult], timeout: float = 60) -> list[dict[str, Any]]:
    return [job.get(timeout=timeout) for job in jobs]


def test_batched_task_groups_requests_and_answers_each(
    client_app: Celery, worker: WorkerProcess
) -> None:
    """16 requests sent at once come back grouped, each with its own result and envelope."""
    texts = [f"document {i}" for i in range(16)]
    jobs = [_send(client_app, "tests.echo", text=t, delay_s=0.2) for t in texts]
    results = _results(jobs)
    assert [r["echo"] for r in results] == [t[::-1] for t in texts]
    assert max(r["batch"]["size"] for r in results) > 1
    assert all(r["batch"]["size"] <= 8 for r in results)
    for result in results:
        assert result["mode"] == "normal" and result["mode_reason"] is None
        assert result["backend"] == "python" and result["model"]["name"] == "echo-model"
        assert result["model"]["loads_in_process"] == 1


def test_plain_task_runs_one_job_per_message(client_app: Celery, worker: WorkerProcess) -> None:
    """The plain task of the family returns its result through Celery, without batch info."""
    result = _send(client_app, "tests.echo_plain", text="plain job").get(timeout=60)
    assert result["echo"] == "boj nialp" and "batch" not in result
    assert result["mode"] == "normal"


@pytest.mark.parametrize("task", ["tests.echo", "tests.echo_plain"])
def test_memory_error_in_normal_mode_is_retried_lightweight(
    client_app: Celery, worker: WorkerProcess, task: str
) -> None:
    """A real MemoryError in normal mode runs the job again in lightweight mode, saying why."""
    hooked = _send(client_app, task, text="abcdefgh", **{MEMORY_ERROR_HOOK: "normal"})
    result = hooked.get(timeout=60)
    assert result["mode"] == "lightweight" and "MemoryError" in result["mode_reason"]
    assert result["echo"] == "dcba"


@pytest.mark.parametrize("task", ["tests.echo", "tests.echo_plain"])
def test_memory_error_in_every_mode_fails_only_that_job(
    client_app: Celery, worker: WorkerProcess, task: str
) -> None:
    """Out of memory even lightweight: InsufficientMemory for that job, its mates unharmed."""
    doomed = _send(client_app, task, text="doomed", **{MEMORY_ERROR_HOOK: "always"})
    mates = [_send(client_app, task, text=f"mate {i}") for i in range(3)]
    with pytest.raises(InsufficientMemory, match="lightweight"):
        doomed.get(timeout=60)
    assert [r["echo"] for r in _results(mates)] == [f"mate {i}"[::-1] for i in range(3)]


@pytest.mark.parametrize("task", ["tests.echo", "tests.echo_plain"])
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"text": ""}, "text"), ({"txt": "x"}, "txt"), ({"text": "x", "delay_s": "1"}, "delay_s")],
)
def test_bad_kwargs_fail_naming_the_field(
    client_app: Celery, worker: WorkerProcess, task: str, kwargs: dict[str, Any], field: str
) -> None:
    """The family's request model refuses a bad field with InvalidInput naming it."""
    with pytest.raises(InvalidInput) as caught:
        _send(client_app, task, **kwargs).get(timeout=60)
    assert str(caught.value).startswith(f"{field}: ")


def test_client_helper_and_request_model(
    client_app: Celery, worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """The family's client helper and ``MLClient.send(model)`` reach its queue by its routes."""
    settings = Settings(redis_url=worker_env["MLWORKER_REDIS_URL"], extra_families=(FAMILY,))  # type: ignore[arg-type]
    client = MLClient(settings=settings)
    assert client.echo("hello").result(timeout=60)["echo"] == "olleh"
    sent = client.send(EchoRequest(text="model"))
    assert sent.task == "tests.echo" and sent.result(timeout=60)["echo"] == "ledom"
    with pytest.raises(InvalidInput, match="text"):
        client.echo("")  # refused before it is sent


@pytest.fixture
def celery_worker(
    worker_env: dict[str, str], stack_dirs: dict[str, Path], client_app: Celery
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``celery -A worker.app:app worker -Q echo``: Celery's own CLI, no mlworker wrapper."""
    log_path = stack_dirs["logs"] / "celery-cli-echo.log"
    node = f"celery-cli-echo-{os.getpid()}@localhost"
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app:app", "worker", "-Q", "echo",
        "-n", node, "-c", "1", "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, env={**worker_env, **ENV}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "mlworker child ready" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        assert client_app.control.ping(destination=[node], timeout=5)
        yield proc, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_celery_cli_worker_batches_and_runs_only_its_families(
    client_app: Celery,
    worker: WorkerProcess,
    celery_worker: tuple[subprocess.Popen[bytes], Path],
) -> None:
    """``celery -A worker.app:app worker -Q echo`` batches like ``mlworker worker`` (prefetch
    raised), registers only the echo family, and leaves a job for another queue alone."""
    worker.stop()  # only the celery-CLI worker consumes echo now
    _, log_path = celery_worker
    jobs = [_send(client_app, "tests.echo", text=f"cli {i}", delay_s=0.2) for i in range(16)]
    results = _results(jobs)
    assert max(r["batch"]["size"] for r in results) > 1
    log = log_path.read_text(errors="replace")
    assert "tests.echo" in log and "tasks.extract_tags" not in log.split("[tasks]")[1][:2000]
