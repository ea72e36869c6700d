"""Malformed and hostile messages pushed straight onto the queues of real workers.

Every case of ``tests.hostile_messages`` goes onto a batched queue served by ``mlworker
worker``, a plain queue served by ``celery -A worker.app:app worker``, and the plain
transcription queue served by ``mlworker worker``. Each must be
refused without requeue: the worker stays up, the good job pushed after them all is
served, a readable id gets an ``InvalidInput`` failure naming the field and a dead-letter
record with the reason, and nothing is left unacknowledged to kill the next worker.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from celery import Celery

from tests.conftest import FIXTURES
from tests.hostile_messages import Hostile, good_envelope, hostile_messages
from tests.support import FINAL_STATES, WorkerProcess, stored_meta
from worker.delivery import list_dead
from worker.family import DEAD_LETTER_QUEUE

#: a good job after ~60 refusals: a batch (tags) or a 60-row AutoML job on 2 shared cores
GOOD_JOB_TIMEOUT_S = 240


@dataclass
class Pushed:
    """What one queue received and what became of it."""

    queue: str
    worker: WorkerProcess
    cases: list[Hostile]
    good_id: str
    good_meta: dict[str, Any]
    dead: dict[str, Any]
    unacked: list[bytes]


QUEUES = {
    # queue: (task, another family's task, the program that starts the worker)
    "tags": ("tasks.extract_tags", "tasks.automl", "mlworker"),
    "automl": ("tasks.automl", "tasks.extract_tags", "celery"),
    "transcribe": ("tasks.transcribe", "tasks.automl", "mlworker"),
}


def _good_kwargs(queue: str, input_root: Path) -> dict[str, Any]:
    if queue == "tags":
        return {"text": "Redis queues carry batched keyphrase extraction jobs to workers."}
    if queue == "transcribe":
        shutil.copyfile(FIXTURES / "audio" / "speech_short.flac", input_root / "hostile.flac")
        return {"audio_path": "hostile.flac"}
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["y"] = 2 * frame["a"] - frame["b"] + rng.normal(scale=0.1, size=60)
    frame.to_csv(input_root / "hostile_good.csv", index=False)
    return {"data_path": "hostile_good.csv", "target": "y", "time_budget_s": 30}


@pytest.fixture(scope="module", params=sorted(QUEUES))
def pushed(
    request: pytest.FixtureRequest,
    client_app: Celery,
    worker_env: dict[str, str],
    stack_dirs: dict[str, Path],
    input_root: Path,
) -> Iterator[Pushed]:
    queue = request.param
    task, other, program = QUEUES[queue]
    proc = WorkerProcess(queue, worker_env, stack_dirs["logs"], program=program)
    proc.start(client_app)
    client = redis.Redis.from_url(worker_env["MLWORKER_REDIS_URL"])
    try:
        cases = hostile_messages(task, queue, other)
        for case in cases:
            client.lpush(queue, case.item)
        good_id, good = good_envelope(task, queue, _good_kwargs(queue, input_root))
        client.lpush(queue, good)
        deadline = time.monotonic() + GOOD_JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            if stored_meta(client, good_id).get("status") in FINAL_STATES:
                break
            assert proc.process is not None and proc.process.poll() is None, proc.log()[-3000:]
            time.sleep(0.5)
        time.sleep(1.0)  # the last refusals' records land
        dead = {job.id: job for job in list_dead(client_app)}
        unacked = list(client.hvals("unacked"))
        yield Pushed(queue, proc, cases, good_id, stored_meta(client, good_id), dead, unacked)
    finally:
        proc.stop()
        client.delete(DEAD_LETTER_QUEUE)
        client.close()


def test_worker_survives_every_hostile_message_and_serves_the_next_job(pushed: Pushed) -> None:
    """After ~60 malformed messages the worker is up and the good job behind them succeeds."""
    assert pushed.worker.process is not None
    assert pushed.worker.process.poll() is None, pushed.worker.log()[-3000:]
    assert pushed.good_meta.get("status") == "SUCCESS", pushed.good_meta
    assert len(pushed.cases) >= 60
    assert "Unrecoverable error" not in pushed.worker.log()


def test_no_refused_message_is_left_unacknowledged(pushed: Pushed) -> None:
    """Refusals are rejected without requeue: nothing restored can kill the next worker."""
    ids = {c.job_id for c in pushed.cases if c.job_id}
    left = [raw for raw in pushed.unacked if any(i in raw.decode(errors="replace") for i in ids)]
    assert left == []


_CATALOG = hostile_messages("t", "q", "o")
_WITH_ID = [c.name for c in _CATALOG if c.job_id]


def test_catalog_covers_the_protocol() -> None:
    """At least 60 hostile messages, most with an id a worker can record a refusal under."""
    assert len(_CATALOG) >= 60
    assert len(_WITH_ID) >= 45


def test_messages_without_a_readable_id_are_logged_and_dropped(pushed: Pushed) -> None:
    """Each message no id can be read from leaves one error line in the worker's log."""
    anonymous = [c for c in pushed.cases if not c.job_id]
    log = pushed.worker.log()
    logged = log.count("refused message id=None") + log.count("dropped a")
    assert logged >= len(anonymous), (logged, [c.name for c in anonymous])


@pytest.mark.parametrize("name", _WITH_ID)
def test_each_refusal_is_recorded_with_its_field(pushed: Pushed, name: str) -> None:
    """A readable id fails as InvalidInput naming the field, and is parked with the reason."""
    case = next(c for c in pushed.cases if c.name == name)
    assert case.job_id is not None
    meta = stored_meta(redis.Redis.from_url(pushed.worker.env["MLWORKER_REDIS_URL"]), case.job_id)
    assert meta.get("status") == "FAILURE", (case.name, meta)
    result = meta["result"]
    assert result["exc_type"] == "InvalidInput", (case.name, result)
    assert case.reason.lower() in str(result["exc_message"]).lower(), (case.name, result)
    dead = pushed.dead.get(case.job_id)
    assert dead is not None, f"{case.name}: not on the dead-letter queue"
    assert case.reason.lower() in dead.reason.lower(), (case.name, dead.reason)
