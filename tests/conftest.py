"""Fixtures that start real parts: a redis-server on a free port and real worker processes.

Nothing here mocks the broker; tests never use ``task_always_eager``. A missing service is
an error, not a skip.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from config import Settings
from tests.support import WorkerProcess
from worker.app import build_app
from worker.redis_server import EmbeddedRedis

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A private redis-server for the whole session."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def stack_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stack")
    dirs = {name: base / name for name in ("input", "output", "state", "logs")}
    for path in dirs.values():
        path.mkdir()
    # the joined whisper model is reused across sessions: joining it is the slow part
    dirs["cache"] = Path(os.environ.get("MLWORKER_TEST_CACHE", Path.cwd() / ".state" / "cache"))
    dirs["cache"].mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.fixture(scope="session")
def worker_env(redis_server: EmbeddedRedis, stack_dirs: dict[str, Path]) -> dict[str, str]:
    """Environment for worker processes and the client settings of this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWORKER_")}
    env.update(
        MLWORKER_REDIS_URL=redis_server.url,
        MLWORKER_INPUT_ROOT=str(stack_dirs["input"]),
        MLWORKER_OUTPUT_ROOT=str(stack_dirs["output"]),
        MLWORKER_STATE_DIR=str(stack_dirs["state"]),
        MLWORKER_MODEL_CACHE_DIR=str(stack_dirs["cache"]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def client_app(worker_env: dict[str, str]) -> Iterator[Celery]:
    """A Celery client configured exactly as an app would be (same settings, same routes)."""
    settings = Settings(
        **{  # type: ignore[arg-type]
            k.removeprefix("MLWORKER_").lower(): v
            for k, v in worker_env.items()
            if k.startswith("MLWORKER_")
        }
    )
    app = build_app(settings)
    yield app
    # AsyncResults sit in reference cycles; collected after redis_server stops, their
    # __del__ unsubscribes and the backend retries the dead server forever (hangs exit).
    gc.collect()
    app.close()


@pytest.fixture(scope="module")
def bare_client(worker_env: dict[str, str]) -> Iterator[Celery]:
    """A Celery app as another team would write it: only a broker and a backend, no routes,
    no queues, nothing of mlworker."""
    url = worker_env["MLWORKER_REDIS_URL"]
    app = Celery("someone-elses-app", broker=url, backend=url)
    yield app
    gc.collect()  # its AsyncResults unsubscribe now, while Redis is still up (see client_app)
    app.close()


@pytest.fixture(scope="session")
def input_root(stack_dirs: dict[str, Path]) -> Path:
    return stack_dirs["input"]


@pytest.fixture(scope="module")
def start_worker(
    client_app: Celery, worker_env: dict[str, str], stack_dirs: dict[str, Path]
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start ``mlworker worker --queues Q``; stopped when the test module ends, so a
    module's workers never take jobs meant for the next module's."""
    started: list[WorkerProcess] = []

    def start(queues: str, concurrency: int = 1, **env: str) -> WorkerProcess:
        proc = WorkerProcess(queues, {**worker_env, **env}, stack_dirs["logs"], concurrency)
        started.append(proc)
        return proc.start(client_app)

    yield start
    for proc in started:
        proc.stop()
