"""A real Flower 2.x and a real tags worker: each batched request shows as a whole task.

Flower learns a task only from events. celery-batches buffers and runs requests without
Celery's ``task-received``, so before issue 19 a batched request had no name (from a client
that sends no ``task-sent``), no arguments, no received time and no runtime, and the worker's
Processed count stayed 0. Flower runs here without auth on 127.0.0.1 (a test-only setting).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.utils.saferepr import saferepr

from tests.support import WorkerProcess
from worker.batching.events import shown

TAGS_TASK = "tasks.extract_tags"
#: a text far over the 200 characters an event shows of a string
LONG_TEXT = "Celery workers batch keyphrase extraction for apps on Redis queues. " * 40
#: a ``kwargsrepr`` a client chose to hide its payload from monitors
HIDDEN = "{'text': '<hidden by the client>'}"
RESULT_TIMEOUT_S = 60
#: how long Flower may take to see every event after the results are stored
EVENTS_TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def flower(worker_env: dict[str, str], stack_dirs: dict[str, Path]) -> Iterator[str]:
    """`celery -A worker.app:app flower` on a free local port; yields its base URL."""
    port = _free_port()
    env = {**worker_env, "FLOWER_UNAUTHENTICATED_API": "true"}
    log = (stack_dirs["logs"] / "flower-events.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app:app", "flower",
         "--address=127.0.0.1", f"--port={port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"flower exited {proc.returncode}"
            try:
                urllib.request.urlopen(f"{base}/healthcheck", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "flower did not answer"
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_shown_cuts_long_strings_and_keeps_a_chosen_repr() -> None:
    """Long strings show as head and length; Celery's default saferepr header is redacted
    too (it holds the payload's first 1,024 characters); a header the client chose is kept."""
    kwargs = {"audio_b64": "QUJD" * 5000, "language": "en"}
    default = saferepr(kwargs, 1024)
    redacted = shown(kwargs, default, 1024)
    assert redacted == repr({"audio_b64": f"{'QUJD' * 50}…(20000 chars)", "language": "en"})
    assert shown(kwargs, "", 1024) == redacted  # no header (celery-node, hybrid messages)
    assert shown(kwargs, HIDDEN, 1024) == HIDDEN
    assert shown(["x" * 300], saferepr(("x" * 300,), 1024), 1024) == repr(
        (f"{'x' * 200}…(300 chars)",)
    )
    assert len(shown({str(i): ["y" * 300] * 40 for i in range(40)}, "", 1024)) < 2100
    assert shown([], "()", 1024) == "()"


def _workers_page(base: str) -> dict[str, dict[str, Any]]:
    """Flower's workers page as JSON: its Processed column is each ``task-received`` count."""
    rows = _get(f"{base}/workers?json=1")["data"]
    return {row["hostname"]: row for row in rows}


def test_flower_shows_batched_jobs_whole(
    flower: str,
    start_worker: Callable[..., WorkerProcess],
    client_app: Celery,
    bare_client: Celery,
) -> None:
    """Batched jobs from mlworker's and a bare Celery client each show in Flower with their
    name, redacted kwargs, received/started times, runtime and SUCCESS; Processed counts."""
    worker = start_worker("tags")
    _eventually(lambda: worker.hostname in _workers_page(flower), 30, "Flower to hear the worker")

    jobs = [
        client_app.send_task(TAGS_TASK, kwargs={"text": LONG_TEXT, "top_n": 3}),
        client_app.send_task(TAGS_TASK, kwargs={"text": "Redis queues for Celery workers."}),
        bare_client.send_task(TAGS_TASK, kwargs={"text": f"bare {LONG_TEXT}", "top_n": 2}),
        bare_client.send_task(TAGS_TASK, kwargs={"text": LONG_TEXT}, kwargsrepr=HIDDEN),
    ]
    assert all(job.get(timeout=RESULT_TIMEOUT_S)["tags"] for job in jobs)
    ids = [job.id for job in jobs]

    def seen() -> dict[str, dict[str, Any]]:
        tasks = _get(f"{flower}/api/tasks")
        return {i: tasks[i] for i in ids if i in tasks}

    def all_done() -> bool:
        tasks = seen()
        return len(tasks) == len(ids) and all(t.get("state") == "SUCCESS" for t in tasks.values())

    _eventually(all_done, EVENTS_TIMEOUT_S, "Flower to see every job succeed")
    tasks = seen()
    for task in tasks.values():
        assert task["name"] == TAGS_TASK, task
        assert task["worker"] == worker.hostname, task
        assert task["received"] and task["started"] and task["succeeded"], task
        assert task["received"] <= task["started"] <= task["succeeded"], task
        assert task["runtime"] > 0, task
        assert "'tags'" in task["result"] and len(task["result"]) <= 2100, task
        assert task["retries"] == 0, task
        assert len(task["kwargs"]) < 400, task  # never the payload
        assert task["args"] == "()", task  # as Celery's own task-sent shows it
    long_shown = tasks[ids[0]]["kwargs"]
    assert f"…({len(LONG_TEXT)} chars)" in long_shown and "'top_n': 3" in long_shown
    assert LONG_TEXT[:200] in long_shown and LONG_TEXT not in long_shown
    assert f"…({len(LONG_TEXT) + 5} chars)" in tasks[ids[2]]["kwargs"]  # the bare client's
    assert tasks[ids[1]]["kwargs"] == "{'text': 'Redis queues for Celery workers.'}"
    assert tasks[ids[3]]["kwargs"] == HIDDEN  # the client's own choice is kept

    processed = _workers_page(flower)[worker.hostname].get("task-received", 0)
    assert processed >= len(ids)
