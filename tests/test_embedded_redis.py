"""The embedded Redis of ``mlworker up`` through real CLI processes: its password, command
policy, durability, and that nothing it starts outlives it or shows a secret in argv."""

from __future__ import annotations

import base64
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import yaml
from celery import Celery

from config import Settings
from worker.app import build_app
from worker.cli.broker import MARKER_FILE, PASSWORD_FILE, running_embedded_url
from worker.cli.stack import FLOWER_CONFIG, FLOWER_PASSWORD_FILE, FLOWER_USER
from worker.client import MLClient
from worker.redis_server import (
    CONFIG_FILE,
    DANGEROUS_COMMANDS,
    PID_FILE,
    EmbeddedRedis,
    free_port,
    redis_server_binary,
)

NOBODY = 65534
FLOWER_AUTH = "admin:flower-test-secret"
#: test-only knobs of the first `up`: its tags worker buffers until 64 requests are in
HOLDING = {"MLWORKER_TAGS_FLUSH_INTERVAL_S": "600", "MLWORKER_BATCH_IDLE_FLUSH_S": "0"}
DOCS = [f"Document {i} about Redis queues, batching and durable job brokers." for i in range(200)]
_started: list[subprocess.Popen[bytes]] = []  # killed when the module ends, if a test failed


class Up:
    """``mlworker up`` as a child process, started the way a terminal would start it."""

    def __init__(self, base: Path, *args: str, **env: str) -> None:
        self.base, self.state, self.logs = base, base / "state", base / "logs"
        base.mkdir(parents=True, exist_ok=True)
        full = {k: v for k, v in os.environ.items() if not k.startswith("MLWORKER_")}
        full.update(
            MLWORKER_STATE_DIR=str(self.state),
            MLWORKER_FLOWER_PORT=str(free_port()),
            MLWORKER_METRICS_PORT=str(free_port()),
            MLWORKER_MODEL_CACHE_DIR=str(Path.cwd() / ".state" / "cache"),
            MLWORKER_SHUTDOWN_GRACE_S="5",
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.env = full
        self.log_path = base / f"up-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "up", "--log-dir", str(self.logs), *args],
                env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # SIGINT at its default, as in a terminal (a background run inherits it ignored)
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )  # fmt: skip
        _started.append(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_url(self, timeout: float = 60.0) -> str:
        """The broker URL, once the marker names it and the server answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            url = running_embedded_url(Settings(state_dir=self.state))
            if url:
                return url
            time.sleep(0.1)
        pytest.fail(f"up did not come up:\n{self.log()}")

    def wait_worker(self, queue: str, timeout: float = 120.0) -> None:
        log = self.logs / f"worker-{queue}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            if log.exists() and "mlworker child ready" in log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        pytest.fail(f"worker-{queue} not ready:\n{log.read_text(errors='replace')}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            pytest.fail(f"up did not stop after signal {sig}:\n{self.log()}")

    def redis_pid(self) -> int:
        return int((self.state / "redis" / PID_FILE).read_text())


def stack_processes(state: Path) -> list[psutil.Process]:
    """Live processes of stacks at or under ``state``: children carry their state dir in
    their environment, the redis-server works in its data directory."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            where = proc.environ().get("MLWORKER_STATE_DIR")
            if (where and Path(where).is_relative_to(state)) or (
                "redis-server" in proc.name() and Path(proc.cwd()).is_relative_to(state)
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_gone(state: Path, timeout: float = 30.0) -> list[psutil.Process]:
    """What of the stack on ``state`` is still alive after ``timeout`` s (ideally nothing)."""
    deadline = time.monotonic() + timeout
    while (left := stack_processes(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _wait_process(state: Path, argument: str, timeout: float = 60.0) -> psutil.Process:
    """The stack's process with ``argument`` in its argv, once it has been started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in stack_processes(state):
            try:
                if argument in proc.cmdline():
                    return proc
            except psutil.Error:
                continue
        time.sleep(0.1)
    pytest.fail(f"no process with {argument!r} in its argv under {state}")


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory every local user may traverse (pytest's tmp dirs are root-only), so the
    second-uid test meets the stack's own permissions and not pytest's."""
    path = Path(tempfile.mkdtemp(prefix="mlworker-embedded-"))
    path.chmod(0o711)
    yield path
    for process in _started:
        if process.poll() is None:  # its children follow it (they get SIGTERM from the kernel)
            process.kill()
            process.wait(10)
    assert wait_gone(path, 30) == []
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="module")
def flower_up(base: Path) -> Iterator[Up]:
    """`mlworker up` with Flower behind basic auth and no workers."""
    up = Up(base / "flower", "--queues", "", "--no-metrics", MLWORKER_FLOWER_BASIC_AUTH=FLOWER_AUTH)
    up.wait_url()
    yield up
    assert up.stop() == 0
    assert not (up.state / FLOWER_CONFIG).exists(), "the Flower config outlived the stack"


def _http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_password_file_is_private_and_reused_across_restarts(base: Path) -> None:
    """The password is made once in a 0600 file (state dir 0700) and reused with the port."""
    up = Up(base / "restart", "--queues", "", "--no-flower", "--no-metrics")
    url = up.wait_url()
    password = (up.state / PASSWORD_FILE).read_text().strip()
    assert len(password) >= 40 and f":{password}@" in url
    assert _mode(up.state) == 0o700
    for private in (PASSWORD_FILE, MARKER_FILE, f"redis/{CONFIG_FILE}"):
        assert _mode(up.state / private) == 0o600, private
    assert _mode(up.state / "redis") == 0o700
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(password, "wrong")).ping()
    redis.Redis.from_url(url).set("kept", "across restarts")
    rival = Up(base / "restart", "--queues", "", "--no-flower", "--no-metrics")
    assert rival.process.wait(30) == 1 and "another mlworker session" in rival.log()
    assert running_embedded_url(Settings(state_dir=up.state)) == url, "the first one runs on"
    assert up.stop() == 0
    assert not (up.state / MARKER_FILE).exists()

    again = Up(base / "restart", "--queues", "", "--no-flower", "--no-metrics")
    assert again.wait_url() == url, "same password and port after a restart"
    assert redis.Redis.from_url(url).get("kept") == b"across restarts"
    assert again.stop() == 0


def test_no_secret_in_the_argv_of_redis_or_flower(flower_up: Up) -> None:
    """Neither redis-server's nor Flower's /proc/PID/cmdline holds a secret; Flower asks."""
    url = flower_up.wait_url()
    password = (flower_up.state / PASSWORD_FILE).read_text().strip()
    flower = _wait_process(flower_up.state, "worker.flower")  # up starts it after Redis
    for pid in (flower_up.redis_pid(), flower.pid):
        argv = cmdline(pid)
        assert password.encode() not in argv and b"flower-test-secret" not in argv, argv
    port = flower_up.env["MLWORKER_FLOWER_PORT"]
    status, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = _http_status(f"http://127.0.0.1:{port}/api/workers")
            break
        except OSError:
            time.sleep(0.3)
    assert status == 401
    assert _http_status(f"http://127.0.0.1:{port}/api/workers", FLOWER_AUTH) == 200
    assert _http_status(f"http://127.0.0.1:{port}/api/workers", "admin:wrong") == 401
    assert password in url


def _wait_line(up: Up, text: str, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.process.poll() is None, up.log()
        if text in up.log():
            return up.log()
        time.sleep(0.2)
    pytest.fail(f"no {text!r} from up:\n{up.log()}")


def test_flower_works_out_of_the_box_with_a_generated_login(base: Path) -> None:
    """Without MLWORKER_FLOWER_BASIC_AUTH, up makes a 0600 Flower password: its REST API and
    broker page answer that login (dead_letter and the unrouted queue listed), nobody else;
    up prints one line per component with its URL, then ready."""
    up = Up(base / "flower-default", "--queues", "")
    log = _wait_line(up, "ready; Ctrl-C stops everything")
    password_file = up.state / FLOWER_PASSWORD_FILE
    assert _mode(password_file) == 0o600
    login = f"{FLOWER_USER}:{password_file.read_text().strip()}"
    flower = f"http://127.0.0.1:{up.env['MLWORKER_FLOWER_PORT']}"
    metrics = f"http://127.0.0.1:{up.env['MLWORKER_METRICS_PORT']}/metrics"
    lines = log.splitlines()
    said_flower = [ln for ln in lines if ln.startswith("flower") and flower in ln]
    assert said_flower and str(password_file) in said_flower[0], log
    assert any(ln.startswith("metrics") and metrics in ln for ln in lines), log
    assert any(ln.startswith("logs") and str(up.logs) in ln for ln in lines), log
    assert _http_status(f"{flower}/api/workers") == 401
    assert _http_status(f"{flower}/api/workers", f"{FLOWER_USER}:wrong") == 401
    assert _http_status(f"{flower}/api/workers", login) == 200
    request = urllib.request.Request(f"{flower}/broker")
    request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
    for queue in ("dead_letter", "celery", "tags", "transcribe", "automl"):
        assert f'<tr id="{queue}">' in page, queue
    assert up.stop() == 0
    assert (up.logs / "flower.log").exists() and (up.logs / "metrics.log").exists()


def test_dangerous_commands_are_refused_even_with_the_password(flower_up: Up) -> None:
    """CONFIG, MODULE, DEBUG, FLUSHALL and friends are unknown; what kombu needs still works."""
    client = redis.Redis.from_url(flower_up.wait_url())
    refused = [
        ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "requirepass"), ("MODULE", "LIST"),
        ("DEBUG", "SLEEP", "0"), ("FLUSHALL",), ("FLUSHDB",), ("SHUTDOWN",), ("SAVE",),
        ("REPLICAOF", "127.0.0.1", "1"), ("SLAVEOF", "127.0.0.1", "1"), ("ACL", "LIST"),
    ]  # fmt: skip
    for command in refused:
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)
    assert client.ping() and client.eval("return redis.call('TIME')[1] ~= nil", 0) == 1
    assert client.info("persistence")["aof_enabled"] == 1


def test_another_local_user_cannot_connect_or_read_the_password(flower_up: Up) -> None:
    """A second uid gets NOAUTH from the server and EACCES on the password file."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to a second uid (nobody)")
    url = flower_up.wait_url()
    port = url.rsplit(":", 1)[1].split("/")[0]
    cli = str(Path(redis_server_binary()).with_name("redis-cli"))
    as_nobody = {"preexec_fn": lambda: (os.setgid(NOBODY), os.setuid(NOBODY))}
    ping = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", port, "PING"], capture_output=True, text=True,
        timeout=10, **as_nobody,
    )  # fmt: skip
    assert "NOAUTH" in ping.stdout + ping.stderr, (ping.stdout, ping.stderr)
    secret = flower_up.state / PASSWORD_FILE
    flower_up.state.chmod(0o711)  # even with the directory opened, the file refuses
    try:
        read = subprocess.run(["cat", str(secret)], capture_output=True, timeout=10, **as_nobody)
        marker = subprocess.run(
            ["cat", str(flower_up.state / MARKER_FILE)], capture_output=True, timeout=10,
            **as_nobody,
        )  # fmt: skip
    finally:
        flower_up.state.chmod(0o700)
    assert read.returncode != 0 and b"Permission denied" in read.stderr
    assert marker.returncode != 0 and b"Permission denied" in marker.stderr


def test_a_leftover_server_on_the_data_dir_is_stopped_before_up_starts_its_own(
    base: Path,
) -> None:
    """A redis-server left running on the data dir is stopped (AOF flushed), never doubled."""
    state = base / "leftover" / "state"
    state.mkdir(parents=True, mode=0o700)
    leftover = EmbeddedRedis(state / "redis", persistence=True, password="left-behind").start()
    assert leftover.process is not None
    redis.Redis.from_url(leftover.url).set("written", "by the leftover")
    up = Up(base / "leftover", "--queues", "", "--no-flower", "--no-metrics")
    url = up.wait_url()
    assert leftover.process.wait(10) == 0, "the leftover got SIGTERM and exited cleanly"
    assert redis.Redis.from_url(url).get("written") == b"by the leftover"
    servers = [p for p in stack_processes(up.state) if "redis-server" in p.name()]
    assert [p.pid for p in servers] == [up.redis_pid()]
    assert up.stop() == 0


def test_compose_and_k8s_redis_rename_the_same_commands() -> None:
    """docker-compose.yml and deploy/k8s/10-redis.yaml rename DANGEROUS_COMMANDS away too."""
    root = Path(__file__).parent.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    k8s = next(yaml.safe_load_all((root / "deploy" / "k8s" / "10-redis.yaml").read_text()))
    commands = {
        "compose": compose["services"]["redis"]["command"][-1],
        "k8s": k8s["spec"]["template"]["spec"]["containers"][0]["command"][-1],
    }
    for where, command in commands.items():
        renamed = set(re.findall(r'--rename-command (\w+) ""', command))
        assert renamed == set(DANGEROUS_COMMANDS), where
        assert "--enable-debug-command no" in command and "--appendonly yes" in command


def _client(url: str) -> tuple[Celery, MLClient]:
    app = build_app(Settings(redis_url=url))  # type: ignore[arg-type]
    return app, MLClient(app=app)


@pytest.mark.parametrize("kill", ["cli", "redis-server"])
def test_queued_unacked_jobs_and_results_survive_a_kill(base: Path, kill: str) -> None:
    """SIGKILL of `up` (or kill -9 of its redis-server): no process is left behind, and the
    next `up` replays the AOF: 50 held jobs finish and an earlier result is still there."""
    where = base / f"durable-{kill}"
    first = Up(where, "--queues", "tags", "--no-flower", "--no-metrics", **HOLDING)
    url = first.wait_url()
    app, client = _client(url)
    first.wait_worker("tags")
    done = [client.extract_tags(doc, top_n=2) for doc in DOCS[:64]]  # one full batch runs
    kept = {job.id: job.result(timeout=120) for job in done}
    held = [client.extract_tags(doc, top_n=2) for doc in DOCS[64:114]]
    broker = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while broker.hlen("unacked") < len(held) and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker has fetched them: buffered, not acked
    assert broker.hlen("unacked") == len(held) and broker.llen("tags") == 0
    broker.close()
    if kill == "cli":
        first.process.kill()
        first.process.wait(10)
    else:
        os.kill(first.redis_pid(), signal.SIGKILL)
        assert first.process.wait(60) == 1, first.log()
        assert "redis-server exited with -9" in first.log()
    left = wait_gone(first.state)
    assert left == [], [p.cmdline() for p in left]

    second = Up(where, "--queues", "tags", "--no-flower", "--no-metrics")
    assert second.wait_url() == url
    results = [job.result(timeout=120) for job in held]
    assert all(r["tags"] for r in results)
    assert done[0].result(timeout=5) == kept[done[0].id], "a result from before the kill"
    app.close()
    assert second.stop() == 0
    assert wait_gone(second.state, 10) == []


def test_password_with_url_characters_reaches_redis_apart_from_the_url(tmp_path: Path) -> None:
    """MLWORKER_REDIS_PASSWORD with `@ / : %` is URL-encoded: broker and backend both log in."""
    password = "p@ss/w:rd%41?#"
    with EmbeddedRedis(tmp_path / "r", password=password) as server:
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{server.port}/0",  # type: ignore[arg-type]
            redis_password=password,  # type: ignore[arg-type]
        )
        app = build_app(settings)
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                assert conn.default_channel.client.ping()
            app.backend.set("mlworker:probe", b"1")
            assert app.backend.get("mlworker:probe") == b"1"
        finally:
            app.close()
