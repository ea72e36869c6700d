"""s3:// inputs and outputs against a real S3-compatible server (moto_server) and real workers.

The server runs as its own process on 127.0.0.1; workers reach it only through the standard
AWS variables (``AWS_ENDPOINT_URL``, dummy keys, region), as they would reach AWS or MinIO.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from celery import Celery
from sklearn.datasets import load_diabetes

from config import Settings
from tasks.automl.artifact import Artifact, load_artifact, write_artifact
from tasks.automl.task import PredictAutoML, TrainAutoML
from tasks.transcription.options import parse_request
from tests.support import WorkerProcess
from tests.transcription_support import AUDIO, MAX_WER, TEXTS, word_error_rate
from worker import storage
from worker.errors import InputTooLarge, PathOutsideRoot, UnreadableInput
from worker.redis_server import free_port

INPUT_BUCKET = "media-in"
MODEL_BUCKET = "models"
UPLOADS = f"s3://{INPUT_BUCKET}/uploads/"
OUTPUT_ROOT = f"s3://{MODEL_BUCKET}/mlworker"
JOB_TIMEOUT_S = 300  #: whisper and autofeat on two shared cores


@dataclass
class S3Server:
    """A running moto_server: its endpoint, its request log and a boto3 client for setup."""

    endpoint: str
    log_path: Path
    client: Any

    def env(self) -> dict[str, str]:
        """What a worker needs to use it: the standard AWS settings, nothing of ours."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookup on a laptop
        }

    def put(self, key: str, body: bytes, bucket: str = INPUT_BUCKET) -> str:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)
        return f"s3://{bucket}/{key}"

    def requests(self, key: str) -> list[str]:
        """The HTTP methods the server logged for ``key`` (GET, HEAD, PUT)."""
        pattern = re.compile(rf"\b(GET|HEAD|PUT) /[^/ ]+/{re.escape(key)}[ ?]")
        return pattern.findall(self.log_path.read_text(errors="replace"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``python -m moto.server`` on a free loopback port, with the input and model buckets."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint, process, log_path)
        env = S3Server(endpoint, log_path, None).env()
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        for bucket in (INPUT_BUCKET, MODEL_BUCKET):
            client.create_bucket(Bucket=bucket)
        yield S3Server(endpoint, log_path, client)
    finally:
        process.terminate()
        process.wait(30)


def _wait_http(endpoint: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"moto_server not answering:\n{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def aws_env(s3_server: S3Server) -> Iterator[dict[str, str]]:
    """The AWS variables in this test process too (the storage layer is used in-process)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        yield s3_server.env()


@pytest.fixture(scope="module")
def s3_worker_env(s3_server: S3Server) -> dict[str, str]:
    """Extra worker environment: the endpoint, and which input prefixes jobs may name."""
    return {**s3_server.env(), "MLWORKER_INPUT_URLS": UPLOADS}


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {"input_root": tmp_path, "output_root": tmp_path}
    values["input_urls"] = UPLOADS
    return Settings(**{**values, **extra})


# --- parse-time checks (no server) ---------------------------------------------------------

OUTSIDE = [
    "s3://media-in/uploads/../secret.flac",  # ".." is refused, never resolved
    "s3://media-in/uploads/sub/../../secret.flac",
    "s3://media-in/uploadsX/a.flac",  # extends the prefix's last component
    "s3://media-in/uploads",  # the prefix itself
    "s3://media-in/other/a.flac",
    "s3://media-inX/uploads/a.flac",
    "s3://other-bucket/uploads/a.flac",
    "s3://media-in/uploads//a.flac",
    "s3://media-in/uploads/./a.flac",
    "s3://media-in/uploads/a.flac?versionId=1",
    "s3://media-in/uploads/a\\..\\b.flac",
    "https://media-in.s3.amazonaws.com/uploads/a.flac",
    "http://127.0.0.1/uploads/a.flac",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("url", OUTSIDE)
def test_urls_outside_the_allowlist_are_refused_at_parse(tmp_path: Path, url: str) -> None:
    """Traversal, prefix extension, other buckets and other schemes: PathOutsideRoot by field."""
    settings = _settings(tmp_path)
    with pytest.raises(PathOutsideRoot) as transcribe:
        parse_request({"audio_path": url}, settings)
    assert transcribe.value.field == "audio_path"
    with pytest.raises(PathOutsideRoot) as automl:
        TrainAutoML().parse({"data_path": url, "target": "y"}, settings)
    assert automl.value.field == "data_path"


def test_no_urls_allowed_unless_configured(tmp_path: Path) -> None:
    """With MLWORKER_INPUT_URLS empty, even a well-formed s3:// URL is PathOutsideRoot."""
    settings = _settings(tmp_path, input_urls="")
    with pytest.raises(PathOutsideRoot, match="none configured"):
        parse_request({"audio_path": "s3://media-in/uploads/a.flac"}, settings)


def test_url_inside_the_prefix_is_accepted_and_normalised(tmp_path: Path) -> None:
    """A URL under a prefix parses to bucket and key; a prefix without '/' gets one."""
    settings = _settings(tmp_path, input_urls="s3://media-in/uploads")
    assert settings.input_urls == (UPLOADS,)
    job = parse_request({"audio_path": "s3://media-in/uploads/day 1/a.flac"}, settings)
    assert job.source.url == storage.ObjectURL("s3", "media-in", "uploads/day 1/a.flac")
    assert job.source.max_bytes == settings.max_url_input_bytes


def test_model_path_url_must_be_under_the_output_root(tmp_path: Path) -> None:
    """A model URL outside the s3:// output root, or with a local output root, is refused."""
    url_root = _settings(tmp_path, output_root=OUTPUT_ROOT)
    ok = f"{OUTPUT_ROOT}/automl/job/model.joblib"
    PredictAutoML().parse({"model_path": ok, "data_path": f"{UPLOADS}t.csv"}, url_root)
    for settings, model in [
        (url_root, f"{UPLOADS}model.joblib"),  # uploads are the apps' bucket: never unpickled
        (url_root, f"{OUTPUT_ROOT}/../x/model.joblib"),
        (_settings(tmp_path), ok),
    ]:
        with pytest.raises(PathOutsideRoot) as caught:
            PredictAutoML().parse({"model_path": model, "data_path": "t.csv"}, settings)
        assert caught.value.field == "model_path"


def test_output_root_keeps_local_paths_as_before(tmp_path: Path) -> None:
    """A local output root is still an absolute Path; an s3:// one a normalised URL string."""
    assert Settings(output_root=str(tmp_path / "out" / ".." / "o")).output_root == tmp_path / "o"
    assert Settings(output_root="s3://models/mlworker").output_root == "s3://models/mlworker/"
    with pytest.raises(ValueError, match="only s3://"):
        Settings(output_root="gs://models/x")


def test_copy_is_cut_off_one_chunk_past_the_limit() -> None:
    """The bounded copy refuses as soon as the count passes the limit: at most limit + chunk."""

    class Counting(io.BytesIO):
        served = 0

        def read(self, size: int | None = -1) -> bytes:
            block = super().read(size)
            self.served += len(block)
            return block

    source, sink = Counting(b"x" * (8 << 20)), io.BytesIO()
    with pytest.raises(InputTooLarge) as caught:
        storage.copy_bounded("data_path", source, sink, max_bytes=1 << 20, chunk=64 << 10)
    assert caught.value.field == "data_path"
    assert source.served <= (1 << 20) + (64 << 10)
    assert len(sink.getvalue()) <= 1 << 20


def test_local_artifact_records_and_checks_its_sha256(tmp_path: Path) -> None:
    """A local model gets a .sha256 beside it; changed bytes are refused before unpickling."""
    saved = write_artifact(Artifact("regression", "y", None, None, None, None), tmp_path, "m")  # type: ignore[arg-type]
    path = Path(saved.location)
    assert (tmp_path / "automl" / "m" / "model.joblib.sha256").read_text().strip() == saved.sha256
    assert saved.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_artifact(saved.location, tmp_path).target == "y"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(UnreadableInput, match="sha256") as caught:
        load_artifact(saved.location, tmp_path)
    assert caught.value.field == "model_path"


# --- reading through the server ------------------------------------------------------------


def test_missing_key_is_unreadable_input(aws_env: dict[str, str]) -> None:
    """No such key (or bucket) is UnreadableInput naming the field, not a botocore error."""
    for url in (f"{UPLOADS}missing.flac", "s3://no-such-bucket/uploads/a.flac"):
        with pytest.raises(UnreadableInput) as caught, storage.spool("audio_path", _url(url), 1024):
            pass
        assert caught.value.field == "audio_path" and "does not exist" in str(caught.value)


def _url(raw: str) -> storage.ObjectURL:
    return storage.check_url("field", raw, [storage.normalise_prefix(raw.rsplit("/", 1)[0])])


def test_object_over_the_limit_is_refused_before_download(
    aws_env: dict[str, str], s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object over the limit: InputTooLarge from its HEAD, no GET; at the limit it spools."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    limit = 1 << 20
    big = s3_server.put("uploads/big.csv", b"a,b\n" * (3 << 18))  # 3 MiB
    with pytest.raises(InputTooLarge) as caught, storage.spool("data_path", _url(big), limit):
        pass
    assert caught.value.field == "data_path" and f"over {limit}" in str(caught.value)
    assert "GET" not in s3_server.requests("uploads/big.csv")
    exact = s3_server.put("uploads/exact.csv", b"x" * limit)
    with storage.spool("data_path", _url(exact), limit) as handle:
        assert len(handle.read()) == limit
    assert handle.closed and not list(tmp_path.iterdir())  # the spooled copy is gone


def test_unreachable_endpoint_fails_cleanly(tmp_path: Path, s3_server: S3Server) -> None:
    """Endpoint down: UnreadableInput naming the field within seconds, no retry loop."""
    script = (
        "import time\nfrom worker import storage\nfrom worker.errors import UnreadableInput\n"
        "url = storage.ObjectURL('s3', 'media-in', 'uploads/a.csv')\nstarted = time.monotonic()\n"
        "try:\n    storage.spool('data_path', url, 1024).__enter__()\n"
        "except UnreadableInput as exc:\n    print(exc.field, time.monotonic() - started)\n"
    )
    env = {**os.environ, **s3_server.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    field, seconds = done.stdout.split()
    assert field == "data_path" and float(seconds) < 60, done.stderr[-2000:]


# --- jobs through real workers -------------------------------------------------------------


def test_transcription_job_reads_s3_audio(
    client_app: Celery,
    s3_server: S3Server,
    s3_worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A transcribe job with an s3:// audio_path is transcribed; a missing key fails alone."""
    url = s3_server.put("uploads/speech_short.flac", (AUDIO / "speech_short.flac").read_bytes())
    start_worker("transcribe", **s3_worker_env)
    good = client_app.send_task("tasks.transcribe", kwargs={"audio_path": url, "language": "en"})
    missing = client_app.send_task(
        "tasks.transcribe", kwargs={"audio_path": f"{UPLOADS}missing.flac"}
    )
    result = good.get(timeout=JOB_TIMEOUT_S)
    assert word_error_rate(TEXTS["speech_short"], result["text"]) <= MAX_WER, result["text"]
    with pytest.raises(UnreadableInput) as caught:
        missing.get(timeout=JOB_TIMEOUT_S)
    assert caught.value.field == "audio_path"


@dataclass
class Host:
    """One worker "host": its own state, input and log folders; only Redis and S3 shared."""

    name: str
    env: dict[str, str]
    logs: Path


def _host(name: str, worker_env: dict[str, str], s3_env: dict[str, str], base: Path) -> Host:
    dirs = {d: base / name / d for d in ("input", "state", "cache", "logs", "tmp")}
    for path in dirs.values():
        path.mkdir(parents=True)
    env = {
        **worker_env,
        **s3_env,
        "MLWORKER_INPUT_ROOT": str(dirs["input"]),
        "MLWORKER_OUTPUT_ROOT": OUTPUT_ROOT,
        "MLWORKER_STATE_DIR": str(dirs["state"]),
        "MLWORKER_MODEL_CACHE_DIR": str(dirs["cache"]),
        "TMPDIR": str(dirs["tmp"]),
    }
    return Host(name, env, dirs["logs"])


@pytest.fixture(scope="module")
def tables(s3_server: S3Server) -> dict[str, str]:
    """Diabetes uploaded twice: with its target to train, without it to predict."""
    frame = load_diabetes(as_frame=True).frame
    return {
        "train": s3_server.put("uploads/diabetes.csv", frame.to_csv(index=False).encode()),
        "predict": s3_server.put(
            "uploads/diabetes_x.csv",
            frame.drop(columns="target").head(40).to_csv(index=False).encode(),
        ),
    }


@pytest.fixture(scope="module")
def trained_on_a(
    client_app: Celery,
    worker_env: dict[str, str],
    s3_worker_env: dict[str, str],
    tables: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Host A trains on the s3:// table, writes its model to the s3:// output root, stops."""
    base = tmp_path_factory.mktemp("hosts")
    host = _host("host-a", worker_env, s3_worker_env, base)
    worker = WorkerProcess("automl", host.env, host.logs).start(client_app)
    try:
        job = client_app.send_task(
            "tasks.automl", kwargs={"data_path": tables["train"], "target": "target"}
        )
        result = dict(job.get(timeout=JOB_TIMEOUT_S))
        result["_children"] = [p.pid for p in worker.children()]
    finally:
        worker.stop()
    yield result


@pytest.fixture(scope="module")
def host_b(
    client_app: Celery,
    worker_env: dict[str, str],
    s3_worker_env: dict[str, str],
    trained_on_a: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """Host B: another automl worker process, started only after A has stopped."""
    host = _host("host-b", worker_env, s3_worker_env, tmp_path_factory.mktemp("hosts"))
    worker = WorkerProcess("automl", host.env, host.logs).start(client_app)
    yield worker
    worker.stop()


def test_automl_job_reads_s3_table_and_writes_s3_model(
    trained_on_a: dict[str, Any], s3_server: S3Server
) -> None:
    """Training on an s3:// data_path puts the model under the s3:// root with its sha256."""
    model_path = trained_on_a["model_path"]
    assert model_path.startswith(f"{OUTPUT_ROOT}/automl/") and model_path.endswith("model.joblib")
    assert trained_on_a["metrics"]["r2"] > 0.3
    key = model_path.removeprefix(f"s3://{MODEL_BUCKET}/")
    stored = s3_server.client.get_object(Bucket=MODEL_BUCKET, Key=key)
    body = stored["Body"].read()
    assert hashlib.sha256(body).hexdigest() == trained_on_a["model_sha256"]
    assert stored["Metadata"]["sha256"] == trained_on_a["model_sha256"]
    assert s3_server.requests(key).count("PUT") == 1  # uploaded once, complete


def test_model_trained_on_host_a_predicts_on_host_b(
    client_app: Celery,
    trained_on_a: dict[str, Any],
    host_b: WorkerProcess,
    tables: dict[str, str],
    aws_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Hosts sharing only Redis and S3: B predicts with A's s3:// model, as A's model would."""
    kwargs = {"model_path": trained_on_a["model_path"], "data_path": tables["predict"]}
    result = client_app.send_task("tasks.automl_predict", kwargs=kwargs).get(timeout=JOB_TIMEOUT_S)
    assert result["worker"]["pid"] in {p.pid for p in host_b.children()}
    assert result["worker"]["pid"] not in trained_on_a["_children"]
    settings = _settings(tmp_path, output_root=OUTPUT_ROOT)
    artifact = load_artifact(trained_on_a["model_path"], settings.output_root)
    frame = load_diabetes(as_frame=True).frame.drop(columns="target").head(40)
    assert result["rows"] == 40
    assert result["predictions"] == pytest.approx(artifact.predict(frame), rel=1e-4, abs=1e-3)


def test_artifact_tampered_in_s3_is_refused(
    client_app: Celery,
    trained_on_a: dict[str, Any],
    host_b: WorkerProcess,
    tables: dict[str, str],
    s3_server: S3Server,
) -> None:
    """A model whose bytes changed in S3 (metadata kept, or dropped) fails as UnreadableInput."""
    source = trained_on_a["model_path"].removeprefix(f"s3://{MODEL_BUCKET}/")
    stored = s3_server.client.get_object(Bucket=MODEL_BUCKET, Key=source)
    body = bytearray(stored["Body"].read())
    body[len(body) // 2] ^= 0xFF
    cases = {
        "mlworker/automl/tampered/model.joblib": {"Metadata": stored["Metadata"]},
        "mlworker/automl/unrecorded/model.joblib": {},
    }
    for key, extra in cases.items():
        s3_server.client.put_object(Bucket=MODEL_BUCKET, Key=key, Body=bytes(body), **extra)
        kwargs = {"model_path": f"s3://{MODEL_BUCKET}/{key}", "data_path": tables["predict"]}
        job = client_app.send_task("tasks.automl_predict", kwargs=kwargs)
        with pytest.raises(UnreadableInput) as caught:
            job.get(timeout=JOB_TIMEOUT_S)
        assert caught.value.field == "model_path" and "sha256" in str(caught.value)
