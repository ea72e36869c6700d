"""Cancel, priority, batch size under a storm, chains and links: through real workers on a
real Redis, with Celery's own client calls (``revoke``, ``priority=``, ``chain``, ``link``)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, signature
from celery.result import AsyncResult

from tests.support import WorkerProcess
from worker.client import MLClient
from worker.errors import InvalidInput
from worker.results import ResultStore

TAGS = "tasks.extract_tags"
TRANSCRIBE = "tasks.transcribe"
BATCH = 4  #: the tags worker's batch size here: small, so a storm is many batches
WAIT_S = 240.0
SPEECH = Path(__file__).parent / "fixtures" / "speech"
AUDIO = Path(__file__).parent / "fixtures" / "audio"
TEXT = "Redis queues carry machine learning jobs to Celery workers that batch the embedder."


@pytest.fixture(scope="module")
def tags_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(
        "tags", MLWORKER_TAGS_BATCH_SIZE=str(BATCH), MLWORKER_TAGS_FLUSH_INTERVAL_S="0.3"
    )


@pytest.fixture(scope="module")
def transcribe_worker(
    input_root: Path, start_worker: Callable[..., WorkerProcess]
) -> WorkerProcess:
    for clip in (SPEECH / "jfk.flac", AUDIO / "speech_long.flac"):
        shutil.copyfile(clip, input_root / clip.name)
    return start_worker("transcribe")


def _tags(app: Celery, text: str = TEXT, **options: Any) -> AsyncResult:
    return app.send_task(TAGS, kwargs={"text": text, "top_n": 3}, **options)


def _status(app: Celery, job_id: str) -> str:
    return str(app.backend.get_task_meta(job_id)["status"])


def _wait_status(app: Celery, job_id: str, wanted: set[str], timeout: float = WAIT_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(app, job_id)
        if status in wanted:
            return status
        if status == "FAILURE":
            raise AssertionError(f"job {job_id} failed: {app.backend.get_task_meta(job_id)}")
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {_status(app, job_id)}, wanted {wanted}")


# --- cancel -------------------------------------------------------------------------------


def test_revoked_request_never_runs_and_its_batch_mates_do(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """A request revoked while it waits in the batch buffer (its countdown) ends REVOKED and
    stays so past its ETA; the requests due with it all run, countdowns included."""
    revoked = _tags(client_app, countdown=3)
    mates = [_tags(client_app, countdown=3) for _ in range(3)] + [_tags(client_app)]
    client_app.control.revoke(revoked.id)
    for mate in mates:
        assert "tags" in mate.get(timeout=WAIT_S)
    time.sleep(2)  # past the revoked one's ETA, with its batch-mates done
    assert _status(client_app, revoked.id) == "REVOKED"
    assert f"Discarding revoked task: {TAGS}[{revoked.id}]" in tags_worker.log()


def test_terminate_stops_a_running_transcription(
    transcribe_worker: WorkerProcess, client_app: Celery
) -> None:
    """``revoke(terminate=True)`` on a transcription that is running kills its child: the job
    is REVOKED (terminated), never delivered again, and the next job runs on a fresh child."""
    job = client_app.send_task(TRANSCRIBE, kwargs={"audio_path": "speech_long.flac"})
    _wait_status(client_app, job.id, {"STARTED", "PROGRESS"})
    client_app.control.revoke(job.id, terminate=True)
    assert _wait_status(client_app, job.id, {"REVOKED", "SUCCESS", "FAILURE"}) == "REVOKED"
    after = client_app.send_task(TRANSCRIBE, kwargs={"audio_path": "jfk.flac"})
    assert after.get(timeout=WAIT_S)["text"]
    assert _status(client_app, job.id) == "REVOKED"  # not redelivered and run meanwhile
    meta = client_app.backend.get_task_meta(job.id)
    assert "terminated" in str(meta["result"]) or "revoked" in str(meta["result"])


# --- priority and batch size --------------------------------------------------------------


def test_urgent_job_overtakes_a_bulk_backlog(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """Behind hundreds of bulk jobs queued at priority 9, a job sent at 0 runs in the batch
    right after the one running when it was sent: between its send and its result, only
    that batch and its own batch-mates finish (the median of three urgent jobs, so one
    sent in the few ms a refill takes may go a batch later)."""
    # enough that the backlog outlasts the three urgent jobs on the fastest backend (INT8)
    bulk = [_tags(client_app, f"{TEXT} Bulk document {i}.", priority=9) for i in range(960)]
    time.sleep(1.0)  # the worker is busy with the backlog
    overtaken = []
    for n in range(3):
        sent = datetime.now(UTC)
        urgent = _tags(client_app, f"An urgent document {n} about speech recognition.", priority=0)
        assert urgent.get(timeout=WAIT_S)["tags"]
        done = urgent.date_done.replace(tzinfo=UTC)
        records = ResultStore(client_app.backend).records([job.id for job in bulk])
        finished = [
            datetime.fromisoformat(r["date_done"]).replace(tzinfo=UTC)
            for r in records
            if r is not None and r.get("status") == "SUCCESS"
        ]
        overtaken.append(sum(1 for at in finished if sent < at <= done))
        time.sleep(0.5)
    assert sorted(overtaken)[1] <= 2 * BATCH - 1, overtaken
    left = sum(
        1 for r in ResultStore(client_app.backend).records([j.id for j in bulk]) if r is None
    )
    assert left >= 4 * BATCH, left  # the backlog was still there after the last urgent job
    for job in bulk:
        job.get(timeout=WAIT_S)


def test_storm_of_due_requests_runs_in_batches_of_the_set_size(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """Requests falling due together (the same countdown) run as batches of at most the
    batch size, never as one batch of all of them (celery-batches #84)."""
    storm = [_tags(client_app, f"{TEXT} Storm {i}.", countdown=2) for i in range(5 * BATCH)]
    results = [job.get(timeout=WAIT_S) for job in storm]
    sizes = [result["batch"]["size"] for result in results]
    assert max(sizes) <= BATCH, sizes
    assert max(sizes) > 1, sizes  # they were batched at all


# --- chains and links ---------------------------------------------------------------------


def test_chain_transcribe_then_tags(
    transcribe_worker: WorkerProcess, tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """Celery's own chain: the tags task takes the transcript's text (and language) from the
    batched transcription before it, and the chain's result is the tags."""
    flow = chain(
        signature(TRANSCRIBE, kwargs={"audio_path": "jfk.flac"}, app=client_app),
        signature(TAGS, kwargs={"top_n": 3}, app=client_app),
    )
    result = flow.apply_async()
    tags = result.get(timeout=WAIT_S)
    transcript = result.parent.get(timeout=5)
    assert tags["language"] == transcript["language"] == "en"
    words = transcript["text"].lower()
    assert tags["tags"] and all(t["tag"].split()[0] in words for t in tags["tags"])
    assert result.parent.status == "SUCCESS"


def test_chain_input_without_text_fails_naming_args(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """A positional argument that is no result with text: InvalidInput("args")."""
    job = client_app.send_task(TAGS, args=({"no": "text"},), kwargs={})
    with pytest.raises(InvalidInput, match="args"):
        job.get(timeout=WAIT_S)


def _messages(client_app: Celery, queue: str, count: int) -> list[dict[str, Any]]:
    """The task messages sent to ``queue`` (which no worker consumes), as kombu stored them."""
    client = client_app.backend.client
    deadline = time.monotonic() + WAIT_S
    while client.llen(queue) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_link_and_link_error_fire_for_batched_requests(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """``link`` is sent with the result, ``link_error`` with the failed job's id, from the
    batched path, to the app's own queue."""
    done = signature("app.on_done", queue="app_callbacks", app=client_app)
    failed = signature("app.on_error", queue="app_errbacks", app=client_app)
    ok = _tags(client_app, link=done)
    bad = client_app.send_task(TAGS, kwargs={"text": "x", "top_n": 0}, link_error=failed)
    result = ok.get(timeout=WAIT_S)
    with pytest.raises(InvalidInput):
        bad.get(timeout=WAIT_S)
    (callback,) = _messages(client_app, "app_callbacks", 1)
    assert callback["headers"]["task"] == "app.on_done"
    assert callback["headers"]["parent_id"] == ok.id
    args = json.loads(_body(callback))[0]
    assert args[0]["tags"] == result["tags"]
    (errback,) = _messages(client_app, "app_errbacks", 1)
    assert errback["headers"]["task"] == "app.on_error"
    assert json.loads(_body(errback))[0] == [bad.id]


def _body(message: dict[str, Any]) -> str:
    return base64.b64decode(message["body"]).decode()


def test_client_and_cli_chain_transcribe_then_tags(
    transcribe_worker: WorkerProcess,
    tags_worker: WorkerProcess,
    client_app: Celery,
    worker_env: dict[str, str],
) -> None:
    """``MLClient.transcribe_then_tags`` and ``mlworker submit transcribe FILE --tags
    --wait`` both end with the transcript's tags."""
    client = MLClient(app=client_app)
    job = client.transcribe_then_tags("jfk.flac", top_n=3)
    tags = job.result(timeout=WAIT_S)
    (transcribed,) = job.previous
    transcript = client_app.backend.get_task_meta(transcribed)["result"]
    assert tags["tags"] and tags["language"] == transcript["language"]
    cli = subprocess.run(
        [sys.executable, "-m", "worker.cli", "submit", "transcribe", "jfk.flac", "--tags",
         "--top-n", "2", "--wait", "--timeout", str(WAIT_S)],
        env=worker_env, capture_output=True, text=True, timeout=WAIT_S + 30, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["tags"]) == 2
