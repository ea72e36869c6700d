"""The worker runtime through real processes: preload once, JSON only, CLI end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from celery import Celery

from tests.support import WorkerProcess
from worker.client import MLClient
from worker.errors import InvalidInput

DOCS = [f"Document {i} about Redis queues, batching and sentence embeddings." for i in range(40)]


@pytest.fixture(scope="module")
def tags_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """Two children consuming the tags queue."""
    return start_worker("tags", concurrency=2)


def test_models_load_once_per_child_however_many_jobs(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """40 jobs over two children: each child loaded the embedder exactly once, before job 1."""
    client = MLClient(app=client_app)
    jobs = [client.extract_tags(doc, top_n=3) for doc in DOCS]
    results = [job.result(timeout=120) for job in jobs]
    child_pids = {p.pid for p in tags_worker.children()}
    seen = {r["model"]["pid"] for r in results}
    assert seen <= child_pids
    assert all(r["model"]["loads_in_process"] == 1 for r in results)
    assert all(r["model"]["name"] == "embedder" and r["backend"] for r in results)
    assert all(r["mode"] in ("normal", "lightweight") for r in results)


def test_pickle_message_is_refused_and_the_worker_goes_on(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """A pickle-serialized job never runs (it fails as InvalidInput naming its body, without
    being decoded); the JSON job queued after it does."""
    pickled = client_app.send_task(
        "tasks.extract_tags", kwargs={"text": "pickled payload", "top_n": 2}, serializer="pickle"
    )
    good = MLClient(app=client_app).extract_tags("JSON payload about queues", top_n=2)
    assert good.result(timeout=60)["tags"]
    time.sleep(1.0)
    meta = client_app.backend.get_task_meta(pickled.id)
    assert meta["status"] == "FAILURE"
    assert isinstance(meta["result"], InvalidInput) and meta["result"].field == "body"
    assert "ContentDisallowed" in str(meta["result"])


def test_submit_wait_through_the_cli(
    tags_worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """`mlworker submit tags TEXT --wait` prints the JSON result from the real worker."""
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "submit", "tags", "Kubernetes autoscales workers "
         "on Redis queue depth with KEDA.", "--top-n", "3", "--wait", "--timeout", "120"],
        env=worker_env, capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert len(result["tags"]) == 3
    assert {"tag", "score"} <= set(result["tags"][0])


def test_status_shows_queues_and_worker_children(
    tags_worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """`mlworker status` lists every queue and each tags child with its model and RSS."""
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status"],
        env={**worker_env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    for queue in ("transcribe", "tags", "automl", "dead_letter"):
        assert queue in out.stdout
    for child in tags_worker.children():
        assert str(child.pid) in out.stdout
    assert "embedder" in out.stdout


def test_resubmitting_a_job_id_returns_the_same_job(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """An app-supplied job id is sent once; the resubmit gets the first job's result."""
    client = MLClient(app=client_app)
    first = client.extract_tags("Idempotent job submission", top_n=2, job_id="app-job-42")
    again = client.extract_tags("Idempotent job submission", top_n=2, job_id="app-job-42")
    assert again.resubmitted and again.id == first.id == "app-job-42"
    assert again.result(timeout=60) == first.result(timeout=60)


def test_a_job_id_reused_for_another_task_or_kwargs_is_refused(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """A job id already bound to a tags job is refused for AutoML or for other tags kwargs."""
    client = MLClient(app=client_app)
    first = client.extract_tags("Job ids bind one request", top_n=2, job_id="app-job-43")
    with pytest.raises(InvalidInput) as other_task:
        client.submit("tasks.automl", {"data_path": "x.csv", "target": "y"}, job_id=first.id)
    assert other_task.value.field == "job_id" and "tasks.extract_tags" in str(other_task.value)
    with pytest.raises(InvalidInput, match="other kwargs"):
        client.extract_tags("Job ids bind one request", top_n=3, job_id=first.id)
    assert len(first.result(timeout=60)["tags"]) == 2


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.slow
def test_up_then_sigint_leaves_no_process_behind(tmp_path: Path) -> None:
    """`mlworker up` with no broker URL starts redis, a worker and Flower; SIGINT stops all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWORKER_")}
    env.update(
        MLWORKER_STATE_DIR=str(tmp_path / "state"),
        MLWORKER_FLOWER_PORT=str(_free_port()),
        MLWORKER_METRICS_PORT=str(_free_port()),
        MLWORKER_MODEL_CACHE_DIR=str(Path.cwd() / ".state" / "cache"),
        HF_HUB_OFFLINE="1",
    )
    logs = tmp_path / "logs"
    up_log = (tmp_path / "up.log").open("wb")  # a file, never a pipe nobody reads
    up = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "worker.cli", "up", "--queues", "tags",
         "--log-dir", str(logs)],
        env=env, stdout=up_log, stderr=subprocess.STDOUT, start_new_session=True,
        # Ctrl-C's default: a run started in the background (`make test &`, nohup) inherits
        # SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            said = (tmp_path / "up.log").read_text()
            if "ready; Ctrl-C" in said and len(_descendants(up.pid)) >= 4:
                break
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("stack did not come up")
        assert any(ln.startswith("worker-tags ") and "tags-up" in ln for ln in said.splitlines())
        procs = _descendants(up.pid)
        names = " ".join(" ".join(p.cmdline()) for p in procs)
        assert "redis-server" in names and "flower" in names and "metrics" in names
        assert "worker --queues tags" in names
        up.send_signal(signal.SIGINT)
        try:
            assert up.wait(90) == 0, (tmp_path / "up.log").read_text()
        except subprocess.TimeoutExpired:
            up.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack into up.log
            up.wait(10)
            pytest.fail("up did not stop 90 s after SIGINT:\n" + (tmp_path / "up.log").read_text())
        gone, alive = psutil.wait_procs(procs, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
        assert not (tmp_path / "state" / "embedded-redis.json").exists()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        up_log.close()


def _free_port() -> int:
    from worker.redis_server import free_port

    return free_port()
