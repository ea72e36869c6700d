"""Reliability and security through real workers on a private, persistent, password-protected
Redis: poison jobs, malformed payloads, a broker outage, memory refusals and chaos.

The session Redis is never touched: these tests stop and restart their own server.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states

from config import Settings
from tests.support import WorkerProcess
from tests.transcription_support import AUDIO
from worker.app import build_app
from worker.delivery import DELIVERY_KEY
from worker.errors import InvalidInput
from worker.redis_server import EmbeddedRedis
from worker.test_hooks import KILL_HOOK

#: in the broker URL of every process here; must never appear in a log line or a result
PASSWORD = "rel-Zq7xK-s3cret-pw"
DOCS = [
    f"Document {i} on Redis queues, batch flushing and sentence embeddings." for i in range(400)
]
#: a job on 2 shared cores takes seconds; the wait covers a child restart with model preload
JOB_TIMEOUT_S = 240


@dataclass
class Stack:
    """A private Redis, a client app on it and the workers started against it."""

    server: EmbeddedRedis
    app: Celery
    env: dict[str, str]
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, queues: str, concurrency: int = 1, **env: str) -> WorkerProcess:
        proc = WorkerProcess(queues, {**self.env, **env}, self.log_dir, concurrency)
        self.workers.append(proc)
        return proc.start(self.app)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url)

    def send(self, task: str, kwargs: dict[str, Any]) -> str:
        return str(self.app.send_task(task, kwargs=kwargs).id)

    def meta(self, job_id: str) -> dict[str, Any]:
        """The stored record (status UNKNOWN while Redis is unreachable)."""
        try:
            return dict(self.app.backend.get_task_meta(job_id, cache=False))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return {"status": "UNKNOWN"}

    def wait(self, job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """Final record of each job; TimeoutError names how many are still open."""
        deadline, done = time.monotonic() + timeout, {}
        while True:
            for job_id in job_ids:
                if job_id not in done:
                    meta = self.meta(job_id)
                    if meta["status"] in states.READY_STATES:
                        done[job_id] = meta
            if len(done) == len(job_ids):
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(job_ids) - len(done)} of {len(job_ids)} jobs not done")
            time.sleep(0.2)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *argv],
            env={**self.env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, worker_env: dict[str, str], input_root: Path
) -> Iterator[Stack]:
    """Private persistent Redis with a password; workers honour the test kill hook."""
    server = EmbeddedRedis(
        tmp_path_factory.mktemp("redis-rel"), persistence=True, password=PASSWORD
    )
    server.start()
    env = {
        **worker_env,
        "MLWORKER_REDIS_URL": server.url,
        "MLWORKER_TEST_HOOKS": "1",
        "MLWORKER_MAX_DELIVERIES": "3",
        "MLWORKER_SHUTDOWN_GRACE_S": "20",
    }
    fields = {k.removeprefix("MLWORKER_").lower(): v for k, v in env.items() if "MLWORKER_" in k}
    app = build_app(Settings(**fields))  # type: ignore[arg-type]
    made = Stack(server, app, env, tmp_path_factory.mktemp("rel-logs"))
    _write_inputs(input_root)
    yield made
    for proc in made.workers:
        proc.stop()
    gc.collect()  # result handles unsubscribe while their Redis still answers
    app.close()
    server.stop()


@pytest.fixture(scope="module")
def mixed(stack: Stack) -> WorkerProcess:
    """One worker on all three queues, two children."""
    return stack.worker("tags,transcribe,automl", concurrency=2)


def _write_inputs(root: Path) -> None:
    """Fixture files under the input root, and two symlinks that point out of it."""
    rel = root / "rel"
    rel.mkdir(exist_ok=True)
    for name in ("speech_short.flac", "empty.flac", "corrupt.flac"):
        shutil.copy(AUDIO / name, rel / name)
    (rel / "notes.txt").write_text("not audio, not a table\n")
    (rel / "fake.parquet").write_text("a,b\n1,2\n")
    (rel / "header_only.csv").write_text("x1,x2,y\n")
    rows = [f"{i % 7},{(i * 3) % 11},{(i % 7) * 2.5 + (i * 3) % 11 + i / 100}" for i in range(60)]
    (rel / "tiny.csv").write_text("x1,x2,y\n" + "\n".join(rows) + "\n")
    for link in ("escape.flac", "escape.csv"):
        if not (rel / link).is_symlink():
            (rel / link).symlink_to("/etc/hostname")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


GOOD = {
    "tasks.extract_tags": {"text": DOCS[0]},
    "tasks.transcribe": {"audio_path": "rel/speech_short.flac", "language": "en"},
    "tasks.automl": {
        "data_path": "rel/tiny.csv",
        "target": "y",
        "task_type": "regression",
        "cv_folds": 2,
        "time_budget_s": 5,
    },  # fmt: skip
}
T, A, M = "tasks.extract_tags", "tasks.transcribe", "tasks.automl"
SHORT = "rel/speech_short.flac"
#: (task, kwargs, the field the error must name)
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    (T, {}, "text"),
    (T, {"text": 123}, "text"),
    (T, {"text": ["a", "list"]}, "text"),
    (T, {"text": ""}, "text"),
    (T, {"text": "x" * 200_001}, "text"),
    (T, {"text": "\U0001f642" * 100_001}, "text"),
    (T, {"text": " \u3000\n\t\u2003 "}, "text"),
    (T, {"text": DOCS[1], "top_n": "five"}, "top_n"),
    (T, {"text": DOCS[1], "top_n": -1}, "top_n"),
    (T, {"text": DOCS[1], "ngram_range": [3, 1]}, "ngram_range"),
    (T, {"text": DOCS[1], "ngram_range": "1-2"}, "ngram_range"),
    (T, {"text": DOCS[1], "language": 5}, "language"),
    (T, {"text": DOCS[1], "diversity": "high"}, "diversity"),
    (T, {"text": DOCS[1], "bogus\u202e": 1}, "bogus\u202e"),
    (A, {}, "audio_path"),
    (A, {"audio_path": SHORT, "audio_b64": "AAAA"}, "audio_path"),
    (A, {"audio_b64": "not base64!!"}, "audio_b64"),
    (A, {"audio_b64": 12345}, "audio_b64"),
    (A, {"audio_b64": "A" * (12 * 1024 * 1024)}, "audio_b64"),
    (A, {"audio_b64": base64.b64encode(b"RIFF\x00garbage" * 50).decode()}, "audio_b64"),
    (A, {"audio_path": "../../etc/passwd"}, "audio_path"),
    (A, {"audio_path": "/etc/passwd"}, "audio_path"),
    (A, {"audio_path": "rel/escape.flac"}, "audio_path"),
    (A, {"audio_path": "rel/\u00fcn\u00efc\u00f6d\u00e9/../../../../etc/passwd"}, "audio_path"),
    (A, {"audio_path": "rel/a\x00b.flac"}, "audio_path"),
    (A, {"audio_path": "rel/missing.flac"}, "audio_path"),
    (A, {"audio_path": "rel/empty.flac"}, "audio_path"),
    (A, {"audio_path": "rel/corrupt.flac"}, "audio_path"),
    (A, {"audio_path": "rel/notes.txt"}, "audio_path"),
    (A, {"audio_path": SHORT, "beam_size": 0}, "beam_size"),
    (A, {"audio_path": SHORT, "task": "summarise"}, "task"),
    (A, {"audio_path": SHORT, "output_formats": ["docx"]}, "output_formats"),
    (M, {"target": "y"}, "data_path"),
    (M, {"data_path": "rel/tiny.csv"}, "target"),
    (M, {"data_path": "rel/tiny.csv", "target": 7}, "target"),
    (M, {"data_path": "../outside.csv", "target": "y"}, "data_path"),
    (M, {"data_path": "rel/escape.csv", "target": "y"}, "data_path"),
    # one line of prose read as a CSV header: the target is not among its "columns"
    (M, {"data_path": "rel/notes.txt", "target": "y"}, "target"),
    (M, {"data_path": "rel/fake.parquet", "target": "y"}, "data_path"),
    (M, {"data_path": "rel/header_only.csv", "target": "y"}, "data_path"),
    (M, {"data_path": "rel/tiny.csv", "target": "y", "test_size": 2}, "test_size"),
    (M, {"data_path": "rel/tiny.csv", "target": "y", "artifact_name": "../../x"}, "artifact_name"),
    ("tasks.automl_predict", {"model_path": "/etc/passwd", "data_path": "rel/tiny.csv"},
     "model_path"),
]  # fmt: skip


def test_malformed_payloads_fail_cleanly_and_the_worker_goes_on(
    stack: Stack, mixed: WorkerProcess
) -> None:
    """43 malformed payloads each fail naming their field; the same children then do good jobs."""
    assert len(MALFORMED) >= 30
    children = {p.pid for p in mixed.children()}
    ids = [stack.send(task, kwargs) for task, kwargs, _ in MALFORMED]
    records = stack.wait(ids)
    wrong = []
    for (task, kwargs, expected), job_id in zip(MALFORMED, ids, strict=True):
        meta = records[job_id]
        exc = meta["result"]
        if not (
            meta["status"] == states.FAILURE
            and isinstance(exc, InvalidInput)
            and exc.field == expected
        ):
            wrong.append((task, repr(kwargs)[:80], expected, meta["status"], repr(exc)[:200]))
    assert not wrong, "\n".join(map(str, wrong))
    good = stack.wait([stack.send(task, kwargs) for task, kwargs in GOOD.items()])
    assert all(m["status"] == states.SUCCESS for m in good.values()), good
    assert {m["result"]["worker"]["pid"] for m in good.values()} <= children
    assert {p.pid for p in mixed.children()} == children, "a child died on bad input"


def test_poison_job_is_dead_lettered_and_replayable_from_the_cli(
    stack: Stack, mixed: WorkerProcess
) -> None:
    """A job that kills its child ends dead-lettered after 3 starts; 40 batch-mates all finish."""
    poison = stack.send(T, {"text": DOCS[2], KILL_HOOK: True})
    others = [stack.send(T, {"text": doc}) for doc in DOCS[3:43]]
    records = stack.wait([poison, *others])
    assert all(records[i]["status"] == states.SUCCESS for i in others), "a batch-mate failed"
    assert records[poison]["status"] == states.FAILURE
    assert type(records[poison]["result"]).__name__ == "DeadLettered"
    client = stack.redis()
    assert int(client.get(DELIVERY_KEY + poison) or 0) == 4  # 3 starts that died + the 4th
    assert max(int(client.get(DELIVERY_KEY + i) or 0) for i in others) <= 2

    listed = stack.cli("dead", "list")
    assert listed.returncode == 0 and poison in listed.stdout, listed.stderr
    shown = stack.cli("dead", "show", poison)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["task"] == T and "3 times" in detail["reason"] and KILL_HOOK in detail["kwargs"]

    requeued = stack.cli("dead", "requeue", poison)
    assert requeued.returncode == 0 and poison in requeued.stdout, requeued.stderr
    assert poison not in stack.cli("dead", "list").stdout
    # replayed with a fresh count: it dies 3 more times and is parked again
    again = stack.wait([poison])[poison]
    assert type(again["result"]).__name__ == "DeadLettered"
    assert poison in stack.cli("dead", "list").stdout


def test_broker_outage_workers_reconnect_and_batches_flush(
    stack: Stack, mixed: WorkerProcess
) -> None:
    """Redis down 10 s then back on its port: tag batches flush again; recovery is measured."""
    warm = stack.wait([stack.send(T, {"text": d}) for d in DOCS[50:60]])
    assert all(m["status"] == states.SUCCESS for m in warm.values())
    before = [stack.send(T, {"text": d}) for d in DOCS[60:70]]  # held by the worker at the cut
    # cut once the worker has fetched them: kombu's Redis transport pops a message (BRPOP)
    # before recording it as unacked (HSET), so a cut inside that window loses the message
    # whatever the worker does (see README, Reliability)
    deadline = time.monotonic() + 30
    while stack.redis().llen("tags") and time.monotonic() < deadline:
        time.sleep(0.05)
    stack.server.stop()
    time.sleep(10)
    stack.server.start()
    restarted = time.monotonic()
    probe = stack.send(T, {"text": DOCS[70]})  # fewer than a batch: flushes by the timer only
    stack.wait([probe], timeout=120)
    recovery = time.monotonic() - restarted
    after = stack.wait([stack.send(T, {"text": d}) for d in DOCS[71:171]], timeout=120)
    assert all(m["status"] == states.SUCCESS for m in after.values())
    print(f"\nbroker outage: 10 s down; first job done {recovery:.1f} s after the restart")
    assert recovery < 60
    # jobs sent before the cut finished before it or come back once Redis is up again
    assert stack.wait(before, timeout=120)
    assert mixed.process is not None and mixed.process.poll() is None


def test_no_secret_in_logs_or_results(stack: Stack, mixed: WorkerProcess) -> None:
    """The Redis password in the broker URL never reaches a worker log line or a stored result."""
    client = stack.redis()
    stored = b"".join(client.get(k) or b"" for k in client.scan_iter("celery-task-meta-*"))
    assert stored, "no results to look at"
    assert PASSWORD.encode() not in stored
    for proc in stack.workers:
        assert PASSWORD not in proc.log()
    assert "***@127.0.0.1" in mixed.log(), "the broker URL is logged, redacted"


def test_memory_refusal_requeues_without_counting_a_delivery(
    tmp_path: Path, worker_env: dict[str, str], input_root: Path
) -> None:
    """Over the hard RSS threshold a job is put back with a countdown, not run, not counted."""
    _write_inputs(input_root)
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = {**worker_env, "MLWORKER_REDIS_URL": server.url}
        app = build_app(Settings(redis_url=server.url))  # type: ignore[arg-type]
        refusing = WorkerProcess(
            "automl", {**env, "MLWORKER_MEMORY_HARD_RSS_MB": "1",
                       "MLWORKER_MEMORY_REFUSAL_COUNTDOWN_S": "1"}, tmp_path, 1,
        ).start(app)  # fmt: skip
        made = Stack(server, app, env, tmp_path, [refusing])
        first_child = {p.pid for p in refusing.children()}  # before any job: no race
        job = made.send(M, GOOD[M])
        deadline = time.monotonic() + 60
        while made.meta(job)["status"] != states.RETRY and time.monotonic() < deadline:
            time.sleep(0.2)
        deadline = time.monotonic() + 60  # the refusing child exits; a new one starts
        while time.monotonic() < deadline and (
            {p.pid for p in refusing.children() if p.is_running()} in (first_child, set())
        ):
            time.sleep(0.2)
        meta = made.meta(job)
        assert meta["status"] == states.RETRY, meta
        assert "memory guard refused" in str(meta["result"])
        assert made.redis().get(DELIVERY_KEY + job) is None, "a refusal counted as a delivery"
        assert {p.pid for p in refusing.children() if p.is_running()} != first_child
        refusing.stop()
        normal = made.worker("automl")
        assert made.wait([job])[job]["status"] == states.SUCCESS
        normal.stop()
        app.close()


def test_sigterm_requeues_buffered_messages_within_the_grace_time(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    """SIGTERM mid-batch: the worker exits within its grace; every job then finishes."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = {**worker_env, "MLWORKER_REDIS_URL": server.url, "MLWORKER_SHUTDOWN_GRACE_S": "5"}
        app = build_app(Settings(redis_url=server.url))  # type: ignore[arg-type]
        made = Stack(server, app, env, tmp_path)
        worker = made.worker(
            "tags", MLWORKER_TAGS_FLUSH_INTERVAL_S="600", MLWORKER_BATCH_IDLE_FLUSH_S="0"
        )
        ids = [made.send(T, {"text": d}) for d in DOCS[200:300]]  # a batch of 64 + 36 buffered
        time.sleep(2)
        started = time.monotonic()
        assert worker.stop(signal.SIGTERM, timeout=60) is not None
        took = time.monotonic() - started
        queued = {json.loads(m)["headers"]["id"] for m in made.redis().lrange("tags", 0, -1)}
        done = {i for i in ids if made.meta(i)["status"] == states.SUCCESS}
        print(f"\nSIGTERM: exited in {took:.1f} s; {len(done)} done, {len(queued)} requeued")
        assert took < 5 + 15, f"shutdown took {took:.1f} s"
        assert set(ids) <= done | queued, "a buffered request was lost"
        made.worker("tags")
        assert all(m["status"] == states.SUCCESS for m in made.wait(ids).values())
        for proc in made.workers:
            proc.stop()
        app.close()


class _ResultWatch:
    """Counts final results as the backend publishes them (one per store), across restarts."""

    def __init__(self, url: str) -> None:
        self.url, self.counts, self.stop = url, Counter[str](), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                pubsub = redis.Redis.from_url(self.url).pubsub()
                pubsub.psubscribe("celery-task-meta-*")
                while not self.stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message["type"] == "pmessage":
                        meta = json.loads(message["data"])
                        if meta.get("status") in states.READY_STATES:
                            self.counts[str(meta["task_id"])] += 1
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.2)


def _chaos_jobs(count: int) -> list[tuple[str, dict[str, Any]]]:
    """Mostly tags, some short transcriptions, a few tiny AutoML jobs."""
    jobs: list[tuple[str, dict[str, Any]]] = [(M, GOOD[M])] * 4
    jobs += [(A, GOOD[A])] * 16
    jobs += [(T, {"text": DOCS[i % len(DOCS)]}) for i in range(count - len(jobs))]
    return jobs


@pytest.mark.slow
def test_chaos_300_jobs_three_child_kills_and_a_redis_restart(
    stack: Stack, mixed: WorkerProcess
) -> None:
    """300 mixed jobs; kill -9 a child 3 times and restart Redis: every job has one result."""
    watch = _ResultWatch(stack.server.url)
    time.sleep(0.5)
    submitted = [stack.send(task, kwargs) for task, kwargs in _chaos_jobs(300)]
    started = restarted = time.monotonic()
    for kill in range(3):
        time.sleep(4)
        victim = max(mixed.children(), key=lambda p: p.create_time())
        os.kill(victim.pid, signal.SIGKILL)
        if kill == 1:
            stack.server.stop()
            time.sleep(3)
            stack.server.start()
            restarted = time.monotonic()
    records = stack.wait(submitted, timeout=480)
    elapsed = time.monotonic() - started
    time.sleep(2)
    watch.stop.set()
    statuses = Counter(m["status"] for m in records.values())
    dead = sum(type(m["result"]).__name__ == "DeadLettered" for m in records.values())
    lost = len(submitted) - len(records)
    duplicated = sum(1 for i in submitted if watch.counts[i] > 1)
    print(
        f"\nchaos: submitted={len(submitted)} lost={lost} duplicated={duplicated} "
        f"dead_lettered={dead} statuses={dict(statuses)} all_done_in={elapsed:.0f}s "
        f"since_redis_restart={time.monotonic() - restarted:.0f}s"
    )
    assert lost == 0 and duplicated == 0 and dead == 0
    assert statuses == {states.SUCCESS: len(submitted)}
