"""Many jobs at once, priorities and cancelling, through a real tags worker on a real Redis.

``MLClient.map_tags``, ``mlworker submit tags --jsonl`` (order, refused lines, resuming),
``--priority`` and kombu's priority lists, ``Job.cancel`` and ``mlworker cancel``. No automl
worker runs here, so an automl job stays queued where the tests can look at it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tasks.tags.samples import documents
from tests.support import WorkerProcess, wait_final_meta
from worker.client import PRIORITY_BULK, Job, JobFailed, MLClient
from worker.errors import InvalidInput
from worker.redis_server import EmbeddedRedis

TASK = "tasks.extract_tags"
CLI_TIMEOUT_S = 180
#: kombu's Redis transport keeps priority 9 messages of queue q in this list
BULK_LIST_SUFFIX = "\x06\x169"


@pytest.fixture(scope="module")
def tags_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One tags worker for the module (default batching settings)."""
    return start_worker("tags")


@pytest.fixture(scope="module")
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to count commands and look at queues."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def _words_in(tags: list[dict[str, Any]], text: str) -> bool:
    """Every word of every tag occurs in ``text``: the tags were extracted from it."""
    folded = text.casefold()
    return all(word in folded for tag in tags for word in tag["tag"].casefold().split())


def _lpushes(client: redis.Redis) -> int:
    """LPUSH calls the server has run: one per message kombu publishes."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


def test_map_tags_returns_each_result_in_input_order(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """40 texts through map_tags come back as 40 results, each the tags of its own text."""
    texts = documents(40)
    results = MLClient(app=client_app).map_tags(texts, top_n=3, timeout=120)
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        assert 1 <= len(result["tags"]) <= 3
        assert _words_in(result["tags"], text), (text, result["tags"])
    # distinct texts, distinct tags: a shuffled order could not pass the check above
    assert len({json.dumps(r["tags"]) for r in results}) > 30


def test_map_return_exceptions_keeps_going(tags_worker: WorkerProcess, client_app: Celery) -> None:
    """A refused request is its InvalidInput in the list with return_exceptions, and raises
    before anything is sent without it."""
    ml = MLClient(app=client_app)
    texts = ["Redis queues feed Celery workers.", "", "Batching helps the embedder."]
    results = ml.map_tags(texts, return_exceptions=True, timeout=120)
    assert isinstance(results[1], InvalidInput) and results[1].field == "text"
    assert _words_in(results[0]["tags"], texts[0]) and _words_in(results[2]["tags"], texts[2])
    with pytest.raises(InvalidInput) as caught:
        ml.map_tags(texts, timeout=120)
    assert caught.value.field == "text"


@pytest.mark.parametrize("bad", [-1, 10, "5", 2.0, True])
def test_priority_outside_0_to_9_is_refused_before_sending(
    client_app: Celery, redis_client: redis.Redis, bad: Any
) -> None:
    """submit, the family helpers and map refuse a priority that is not an int 0..9."""
    ml = MLClient(app=client_app)
    before = _lpushes(redis_client)
    for send in (
        lambda: ml.submit(TASK, {"text": "x"}, priority=bad),
        lambda: ml.extract_tags("Some text.", priority=bad),
        lambda: ml.map_tags(["Some text."], priority=bad),
    ):
        with pytest.raises(InvalidInput) as caught:
            send()
        assert caught.value.field == "priority"
    assert _lpushes(redis_client) == before


def test_priority_message_waits_in_kombus_list_and_is_known(
    client_app: Celery, redis_client: redis.Redis, worker_env: dict[str, str]
) -> None:
    """A priority 9 job waits in the queue's "\\x06\\x169" list; `status` and `cancel` find it
    there (no automl worker runs in this module)."""
    job = MLClient(app=client_app).automl("table.csv", "y", priority=PRIORITY_BULK)
    bulk_list = "automl" + BULK_LIST_SUFFIX
    try:
        assert redis_client.llen(bulk_list) == 1
        status = _cli(worker_env, "status", job.id)
        assert status.returncode == 0, status.stderr
        cancelled = _cli(worker_env, "cancel", job.id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"revoke sent to the workers for job {job.id}" in cancelled.stdout
        assert "PENDING" in cancelled.stdout
    finally:
        redis_client.delete(bulk_list)


def test_cli_priority_is_validated(worker_env: dict[str, str]) -> None:
    """`--priority 12` is one InvalidInput line, exit 1."""
    out = _cli(worker_env, "submit", "tags", "Some text about queues.", "--priority", "12")
    assert out.returncode == 1
    assert out.stderr.startswith("InvalidInput: priority: must be an integer from 0")


def test_cancel_unknown_job_exits_3(worker_env: dict[str, str]) -> None:
    """`mlworker cancel` of an id nobody sent exits 3 and says so."""
    out = _cli(worker_env, "cancel", "no-such-job-42")
    assert out.returncode == 3
    assert "no job with id no-such-job-42 is known" in out.stderr


def test_job_cancel_revokes_a_job_waiting_for_its_countdown(
    tags_worker: WorkerProcess, client_app: Celery, redis_client: redis.Redis
) -> None:
    """Job.cancel() of a job sent with countdown=30 leaves it REVOKED in the result store."""
    sent = client_app.send_task(TASK, kwargs={"text": "Cancel me before I run."}, countdown=30)
    job = Job(sent.id, TASK, client_app)
    del sent
    time.sleep(1.0)  # the worker has it reserved, waiting for its eta
    job.cancel()
    meta = wait_final_meta(redis_client, job.id, timeout=60)
    if not meta:  # REVOKED is not in FINAL_STATES; read the record as it is now
        meta = json.loads(redis_client.get(f"celery-task-meta-{job.id}") or "{}")
    assert meta.get("status") == "REVOKED", meta
    assert job.state == "REVOKED"
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=5)
    assert failed.value.exc_type == "TaskRevokedError"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """The JSONL input: 14 documents, three bad lines and a blank one."""
    texts = documents(14)
    good = [json.dumps({"text": t, "top_n": 2 + i % 3}) for i, t in enumerate(texts)]
    return [
        *good[:4],
        "{not json",
        *good[4:8],
        json.dumps({"text": "Fine text.", "top_n": 0}),
        "",  # blank lines are skipped
        *good[8:],
        json.dumps(["a", "list"]),
    ]


@pytest.fixture(scope="module")
def first_run(
    tags_worker: WorkerProcess,
    worker_env: dict[str, str],
    lines: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """The first `submit tags --jsonl` run: its input, its --out file and its outcome."""
    base = tmp_path_factory.mktemp("jsonl")
    source, out = base / "docs.jsonl", base / "tags.jsonl"
    source.write_text("\n".join(lines) + "\n")
    run = _cli(worker_env, "submit", "tags", "--jsonl", str(source), "--out", str(out))
    return source, out, run


class TestJsonl:
    """`mlworker submit tags --jsonl IN --out OUT`, end to end, and its resume."""

    def test_one_line_per_input_line_in_order(
        self, first_run: tuple[Path, Path, Any], lines: list[str]
    ) -> None:
        """Every non-blank line has its output line, in input order, with its tags or error;
        a bad line fails alone (InvalidInput naming the field) and the exit status is 1."""
        _, out, run = first_run
        assert run.returncode == 1, run.stderr
        records = [json.loads(raw) for raw in out.read_text().splitlines()]
        numbered = [n for n, text in enumerate(lines, 1) if text.strip()]
        assert [r["line"] for r in records] == numbered
        by_line = {r["line"]: r for r in records}
        assert by_line[5]["error"]["type"] == "InvalidInput"
        assert by_line[5]["error"]["field"] == "line"
        assert by_line[10]["error"] == {
            "type": "InvalidInput",
            "message": "must be between 1 and 50, got 0",
            "field": "top_n",
        }
        assert by_line[len(lines)]["error"]["field"] == "line"
        good = [r for r in records if r["state"] == "SUCCESS"]
        assert len(good) == 14
        for record in good:
            kwargs = json.loads(lines[record["line"] - 1])
            assert len(record["result"]["tags"]) <= kwargs["top_n"]
            assert _words_in(record["result"]["tags"], kwargs["text"])
        assert "wrote 17 lines" in run.stderr and "; 3 failed" in run.stderr

    def test_rerun_keeps_everything_and_sends_nothing(
        self,
        first_run: tuple[Path, Path, Any],
        worker_env: dict[str, str],
        redis_client: redis.Redis,
    ) -> None:
        """The same command again keeps every line of OUT and publishes no message."""
        source, out, _ = first_run
        before, pushes = out.read_text(), _lpushes(redis_client)
        again = _cli(worker_env, "submit", "tags", "--jsonl", str(source), "--out", str(out))
        assert again.returncode == 1
        assert "0 sent, 0 submitted before (not sent again), 17 kept" in again.stderr
        assert out.read_text() == before
        assert _lpushes(redis_client) == pushes

    def test_interrupted_run_resumes_without_resending(
        self,
        first_run: tuple[Path, Path, Any],
        worker_env: dict[str, str],
        redis_client: redis.Redis,
    ) -> None:
        """With OUT cut short (as by a crash), a rerun re-sends nothing: the lost lines' job
        ids are claimed, so their results are read back; OUT is whole and in order again."""
        source, out, _ = first_run
        whole = out.read_text()
        out.write_text("".join(whole.splitlines(keepends=True)[:5]) + '{"line": 9, "job')
        pushes = _lpushes(redis_client)
        again = _cli(worker_env, "submit", "tags", "--jsonl", str(source), "--out", str(out))
        assert again.returncode == 1, again.stderr
        assert "0 sent, 10 submitted before (not sent again), 5 kept" in again.stderr
        assert _lpushes(redis_client) == pushes
        assert out.read_text() == whole

    def test_text_and_jsonl_are_exclusive(
        self, first_run: tuple[Path, Path, Any], worker_env: dict[str, str]
    ) -> None:
        """TEXT with --jsonl, or neither, is a usage error naming both."""
        source, out, _ = first_run
        both = _cli(worker_env, "submit", "tags", "Text.", "--jsonl", str(source), "--out", "x")
        neither = _cli(worker_env, "submit", "tags")
        for result in (both, neither):
            assert result.returncode == 2
            assert "either TEXT or --jsonl FILE" in result.stderr
        no_out = _cli(worker_env, "submit", "tags", "--jsonl", str(source))
        assert no_out.returncode == 2 and "--out" in no_out.stderr
