"""The CLI never leaves an operator guessing: readable errors with hints, job ids, exit codes.

Every test runs ``python -m worker.cli`` as a subprocess against the session's real Redis and
real workers (tags and transcribe); nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.support import WorkerProcess
from worker.client import JobFailed, MLClient
from worker.errors import InvalidInput, PathOutsideRoot

CLI_TIMEOUT_S = 180
UUID = re.compile(r"job ([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., WorkerProcess]) -> list[WorkerProcess]:
    """One tags and one transcribe worker; no automl worker, so automl jobs stay queued."""
    return [start_worker("tags"), start_worker("transcribe")]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_worker_side_error_is_one_line_with_a_hint(
    workers: list[WorkerProcess], worker_env: dict[str, str]
) -> None:
    """A path outside the input root fails as `PathOutsideRoot: audio_path: ...` plus a hint
    naming --inline and MLWORKER_INPUT_ROOT, exit 1, no traceback."""
    out = _cli(worker_env, "submit", "transcribe", "/outside/clip.flac", "--wait")
    assert out.returncode == 1, out.stderr
    assert "PathOutsideRoot: audio_path: " in out.stderr
    assert "('audio_path'" not in out.stderr and "Traceback" not in out.stderr
    hint = out.stderr[out.stderr.index("hint:") :]
    assert "--inline" in hint and "MLWORKER_INPUT_ROOT" in hint
    assert out.stdout == ""


def test_client_side_refusal_is_one_line(
    workers: list[WorkerProcess], worker_env: dict[str, str]
) -> None:
    """A request the client refuses before sending prints `InvalidInput: top_n: ...`, exit 1."""
    out = _cli(worker_env, "submit", "tags", "Some text about queues.", "--top-n", "0")
    assert out.returncode == 1
    assert out.stderr.strip() == "InvalidInput: top_n: must be between 1 and 50, got 0"


def test_mlclient_raises_the_real_error_types(
    workers: list[WorkerProcess], client_app: Celery, worker_env: dict[str, str]
) -> None:
    """An app gets PathOutsideRoot (an InvalidInput with .field) from a failed job, also in a
    fresh process that imported nothing but worker.client."""
    job = MLClient(app=client_app).transcribe("/outside/clip.flac")
    with pytest.raises(InvalidInput) as caught:
        job.async_result.get(timeout=60, propagate=True)
    assert type(caught.value) is PathOutsideRoot and caught.value.field == "audio_path"
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=10)
    assert isinstance(failed.value.error, PathOutsideRoot)
    assert failed.value.exc_type == "PathOutsideRoot"
    assert failed.value.message.startswith("audio_path: ")
    code = (
        "from worker.client import MLClient, JobFailed\n"
        "job = MLClient().transcribe('/outside/clip.flac')\n"
        "try: job.result(timeout=60)\n"
        "except JobFailed as exc: print(type(exc.error).__module__, exc.error.field)\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], env=worker_env, capture_output=True, text=True, timeout=120
    )
    assert fresh.stdout.split() == ["worker.errors", "audio_path"], fresh.stderr[-2000:]


def test_submit_wait_prints_the_job_id_first(
    workers: list[WorkerProcess], worker_env: dict[str, str]
) -> None:
    """`submit --wait` names the job on stderr before waiting; stdout stays the JSON result."""
    text = "Redis queues feed Celery workers that transcribe audio and train models on tables."
    out = _cli(worker_env, "submit", "tags", text, "--wait")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["tags"]) == 5
    found = UUID.match(out.stderr)
    assert found, out.stderr
    done = _cli(worker_env, "status", found.group(1))
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "SUCCESS"


def test_status_tells_unknown_from_queued(
    workers: list[WorkerProcess], worker_env: dict[str, str], input_root: Path
) -> None:
    """An id nobody sent exits 3 saying so; a job still waiting in its queue is PENDING, exit 0;
    a --wait that times out exits 4 naming the job and `mlworker status`."""
    unknown = _cli(worker_env, "status", "no-such-job-17")
    assert unknown.returncode == 3
    assert "no job with id no-such-job-17 is known" in unknown.stderr
    (input_root / "queued.csv").write_text("x,y\n1,2\n2,3\n")
    waited = _cli(
        worker_env, "submit", "automl", "queued.csv", "--target", "y", "--wait", "--timeout", "1"
    )
    queue = redis.Redis.from_url(worker_env["MLWORKER_REDIS_URL"])
    try:
        assert waited.returncode == 4, waited.stderr
        found = UUID.match(waited.stderr)
        assert found, waited.stderr
        job_id = found.group(1)
        assert f"mlworker status {job_id}" in waited.stderr
        queued = _cli(worker_env, "status", job_id)
        assert queued.returncode == 0, queued.stderr
        assert json.loads(queued.stdout)["status"] == "PENDING"
    finally:  # no automl worker of a later module may pick this job up
        queue.delete("automl")
        queue.close()


def test_failed_job_status_shows_type_and_message(
    workers: list[WorkerProcess], worker_env: dict[str, str], client_app: Celery
) -> None:
    """`status ID` of a failed job shows the error as type and `field: problem`."""
    job = MLClient(app=client_app).transcribe("/outside/clip.flac")
    with pytest.raises(JobFailed):
        job.result(timeout=60)
    out = _cli(worker_env, "status", job.id)
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "PathOutsideRoot"
    assert meta["result"]["message"].startswith("audio_path: ")


def test_models_verify_without_export_says_what_to_run(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """`models verify embedder` on an empty cache prints the export command, exit 3."""
    env = {**worker_env, "MLWORKER_MODEL_CACHE_DIR": str(tmp_path)}
    out = _cli(env, "models", "verify", "embedder", "--backend", "onnx")
    assert out.returncode == 3, out.stderr
    assert "mlworker models export --backend onnx" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_models_export_is_quiet(worker_env: dict[str, str], tmp_path: Path) -> None:
    """`models export` (trace, quantize, verify) prints its result lines and nothing on stderr:
    no TracerWarning flood, no onnxruntime advice, no progress bars."""
    env = {**worker_env, "MLWORKER_MODEL_CACHE_DIR": str(tmp_path)}
    out = _cli(env, "models", "export", "--backend", "onnx-int8")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exported to" in out.stdout and "PASS" in out.stdout
    assert out.stderr == "", out.stderr[-3000:]
