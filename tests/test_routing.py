"""Jobs from clients that know nothing of mlworker's routes, and the plain Celery worker.

A bare ``Celery(broker=..., backend=...)`` app, as any team would write it, sends every task
to Celery's default ``celery`` queue. A worker started by ``celery -A worker.app:app
worker -Q tags`` (not the ``mlworker`` CLI) must consume that queue too, run the tags jobs
it finds there batched exactly as ``mlworker worker`` does, pass other families' jobs on to
their own queue, and fail an unknown task at once instead of leaving it PENDING.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.hostile_messages import Envelope
from tests.support import WorkerProcess, wait_final_meta
from worker.errors import InvalidInput

RESULT_TIMEOUT_S = 180
TEXT = "Celery workers on Redis queues batch keyphrase extraction for apps {}."


@pytest.fixture(scope="module")
def plain_celery_worker(
    client_app: Celery, worker_env: dict[str, str], stack_dirs: dict[str, Path]
) -> Iterator[WorkerProcess]:
    """``celery -A worker.app:app worker -Q tags``: no mlworker CLI involved."""
    proc = WorkerProcess("tags", worker_env, stack_dirs["logs"], program="celery")
    proc.start(client_app)
    yield proc
    proc.stop()


def test_plain_celery_worker_batches_a_burst(
    plain_celery_worker: WorkerProcess, client_app: Celery
) -> None:
    """16 tag jobs sent at once to a `celery -A` worker come back batched (size > 1)."""
    jobs = [client_app.send_task("tasks.extract_tags", kwargs={"text": TEXT.format(i)})
            for i in range(16)]  # fmt: skip
    results = [job.get(timeout=RESULT_TIMEOUT_S) for job in jobs]
    assert all(len(r["tags"]) == 5 for r in results)
    assert max(r["batch"]["size"] for r in results) > 1


def test_job_from_a_client_without_routes_gets_its_result(
    plain_celery_worker: WorkerProcess, bare_client: Celery
) -> None:
    """`send_task("tasks.extract_tags")` from a bare Celery app lands on `celery` and runs."""
    job = bare_client.send_task("tasks.extract_tags", kwargs={"text": TEXT.format("bare")})
    assert job.get(timeout=RESULT_TIMEOUT_S)["tags"]


def test_unknown_task_from_a_client_without_routes_fails_at_once(
    plain_celery_worker: WorkerProcess, bare_client: Celery
) -> None:
    """A task no family declares fails as InvalidInput within seconds, not PENDING forever."""
    job = bare_client.send_task("tasks.no_such_thing", kwargs={"x": 1})
    with pytest.raises(InvalidInput) as caught:
        job.get(timeout=30)
    assert caught.value.field == "task" and "not a task of any" in str(caught.value)


def test_other_family_job_is_passed_on_to_its_queue(
    plain_celery_worker: WorkerProcess, bare_client: Celery, worker_env: dict[str, str]
) -> None:
    """`tasks.automl` from a bare client is moved from `celery` to the `automl` queue intact."""
    client = redis.Redis.from_url(worker_env["MLWORKER_REDIS_URL"])
    try:
        job = bare_client.send_task("tasks.automl", kwargs={"data_path": "t.csv", "target": "y"})
        deadline = time.monotonic() + 30
        moved: list[dict[str, object]] = []
        while time.monotonic() < deadline and not moved:
            moved = [json.loads(raw) for raw in client.lrange("automl", 0, -1)]
            moved = [m for m in moved if m["headers"]["id"] == job.id]  # type: ignore[index]
            time.sleep(0.2)
        assert moved, "the job never reached the automl queue"
        assert moved[0]["headers"]["task"] == "tasks.automl"  # type: ignore[index]
        assert client.llen("celery") == 0
        assert job.state == "PENDING"  # waiting for an automl worker, not failed
    finally:
        client.delete("automl")
        client.close()


def test_protocol_1_messages_run_and_bad_ones_are_refused(
    plain_celery_worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """An old-protocol message (everything in the body, as gocelery sends) runs batched; one
    whose args are not a list fails as InvalidInput('args') under its id."""
    client = redis.Redis.from_url(worker_env["MLWORKER_REDIS_URL"])
    try:
        good, bad = str(uuid.uuid4()), str(uuid.uuid4())
        for job_id, args in ((good, []), (bad, {"not": "a list"})):
            body = {"task": "tasks.extract_tags", "id": job_id, "args": args,
                    "kwargs": {"text": TEXT.format("protocol 1")}}  # fmt: skip
            client.lpush("tags", Envelope(task=None, queue="tags", body=body, headers={}).item())
        assert wait_final_meta(client, good, RESULT_TIMEOUT_S).get("status") == "SUCCESS"
        refused = wait_final_meta(client, bad, 30)
        assert refused.get("status") == "FAILURE"
        assert refused["result"]["exc_type"] == "InvalidInput"  # type: ignore[index]
        assert "args" in str(refused["result"])
    finally:
        client.close()
