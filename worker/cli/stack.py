"""The local stack behind ``mlworker up`` and ``mlworker demo``: Redis, workers, Flower.

Every child runs in its own session so a terminal Ctrl-C reaches only the CLI, which then
stops them in order: workers get SIGTERM (warm shutdown: the running job finishes, unstarted
messages go back to Redis), anything still alive after the grace time is killed with its
whole process group, and the embedded redis-server is stopped last. A CLI that dies without
doing so (SIGKILL) still takes them along on Linux: the kernel sends each child SIGTERM.
Secrets reach the children through their environment or 0600 files, never their argv.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from worker.cli.broker import URL_ENV, broker_for_session, private_state_dir
from worker.redis_server import LOG_FILE, EmbeddedRedis, die_with_parent, write_private

#: Flower's tornado config file (Python) holding basic auth; exists while Flower runs
FLOWER_CONFIG = "flower-config.py"
#: made at the first ``up`` without MLWORKER_FLOWER_BASIC_AUTH (0600): Flower's UI and REST
#: API then work for whoever can read it, as the Redis password does, and for no other user
FLOWER_PASSWORD_FILE = "flower.password"
#: the login that goes with FLOWER_PASSWORD_FILE
FLOWER_USER = "mlworker"
#: seconds between readiness probes of children that have not answered yet
READY_POLL_S = 0.3


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None
    #: what the operator opens (Flower, metrics) or the Celery node name (a worker)
    address: str | None = None
    #: answers ``True`` once the child serves (a worker's ping, an HTTP answer)
    probe: Callable[[], bool] | None = None


@dataclass
class LocalStack:
    """Processes started for one ``up``/``demo`` session."""

    settings: Settings
    url: str
    children: list[Child] = field(default_factory=list)
    #: watched like the children but stopped by the broker session (the redis-server)
    watched: list[Child] = field(default_factory=list)
    private_files: list[Path] = field(default_factory=list)

    def watch_server(self, server: EmbeddedRedis | None) -> None:
        if server is not None and server.process is not None:
            log = server.data_dir / LOG_FILE
            self.watched.append(Child("redis-server", server.process, log))

    def spawn(self, name: str, argv: list[str], log_dir: Path | None, env: dict[str, str]) -> Child:
        log_path = log_dir / f"{name}.log" if log_dir else None
        out = log_path.open("ab") if log_path else None
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env, URL_ENV: self.url},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # SIGTERM (warm shutdown) if the CLI is killed
        )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def start_worker(self, queue: str, log_dir: Path | None, env: dict[str, str]) -> Child:
        node = f"{queue}-up{os.getpid()}@{socket.gethostname()}"
        argv = [sys.executable, "-m", "worker.cli", "worker", "--queues", queue, "-n", node]
        child = self.spawn(f"worker-{queue}", argv, log_dir, env)
        child.address, child.probe = node, lambda: self._pings(node)
        return child

    def _pings(self, node: str) -> bool:
        """The worker's main process answers a remote-control ping (its consumer is up)."""
        return bool(self.control_app().control.ping(destination=[node], timeout=0.5))

    _control: Any = None

    def control_app(self) -> Any:
        """A Celery app on this session's broker, for pings and clients (made once)."""
        if self._control is None:
            from worker.app import build_app

            self._control = build_app(Settings(redis_url=self.url))  # type: ignore[arg-type]
        return self._control

    def wait_ready(self, timeout: float, ready: Callable[[Child], None]) -> list[Child]:
        """Probe every child until it serves, calling ``ready`` once per child as it does.

        Returns the children that died or never answered within ``timeout`` (empty: all up).
        """
        waiting = [c for c in self.children if c.probe is not None]
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            if any(c.process.poll() is not None for c in self.children + self.watched):
                break
            for child in list(waiting):
                assert child.probe is not None
                with contextlib.suppress(Exception):  # not answering yet is not an error
                    if child.probe():
                        waiting.remove(child)
                        ready(child)
            time.sleep(READY_POLL_S)
        dead = self.dead()
        return dead + [c for c in waiting if c not in dead]

    def start_flower(self, log_dir: Path | None) -> Child:
        s = self.settings
        auth = s.flower_basic_auth.get_secret_value() if s.flower_basic_auth else None
        if not auth and s.flower_address not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(
                f"refusing to expose Flower on {s.flower_address} without "
                "MLWORKER_FLOWER_BASIC_AUTH=user:password"
            )
        argv = [
            sys.executable, "-m", "worker.flower",
            f"--address={s.flower_address}", f"--port={s.flower_port}",
        ]  # fmt: skip
        # basic auth in a 0600 file, not argv: any local user can read /proc/*/cmdline
        conf = private_state_dir(s) / FLOWER_CONFIG
        logins = (auth or f"{FLOWER_USER}:{flower_password(s)}").split(",")
        write_private(conf, f"basic_auth = {logins!r}\n")  # as --basic-auth
        self.private_files.append(conf)
        argv.append(f"--conf={conf}")
        child = self.spawn("flower", argv, log_dir, {})
        child.address = f"http://{s.flower_address}:{s.flower_port}"
        child.probe = lambda: _answers(f"{child.address}/healthcheck")
        return child

    def start_metrics(self, log_dir: Path | None) -> Child:
        argv = [sys.executable, "-m", "worker.cli", "metrics"]
        child = self.spawn("metrics", argv, log_dir, {})
        s = self.settings
        child.address = f"http://{s.metrics_address}:{s.metrics_port}/metrics"
        child.probe = lambda: _answers(child.address or "")
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children + self.watched if c.process.poll() is not None]

    def stop(self, grace: float) -> None:
        """SIGTERM everything, wait up to ``grace`` s, then SIGKILL what is left (by group)."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(max(0.1, deadline - time.monotonic()))
        for child in self.children:
            # the worker's pool children share its process group: none may outlive it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(5)
        for path in self.private_files:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def local_stack(settings: Settings) -> Iterator[LocalStack]:
    """Broker (configured or embedded) plus a stack that is always stopped on exit."""
    with broker_for_session(settings) as broker:
        stack = LocalStack(settings, broker.url)
        if broker.requeued:
            print(f"requeued {broker.requeued} jobs left unacked by a killed run", file=sys.stderr)
        stack.watch_server(broker.server)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            yield stack
        finally:
            signal.signal(signal.SIGTERM, previous)
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C waits
            try:
                stack.stop(settings.shutdown_grace_s)
            finally:
                signal.signal(signal.SIGINT, interrupt)


def flower_password(settings: Settings) -> str:
    """The generated Flower password (``FLOWER_USER``'s), made 0600 at the first need."""
    path = private_state_dir(settings) / FLOWER_PASSWORD_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _answers(url: str) -> bool:
    """Any HTTP answer (401 included: Flower asks for its login) means the server serves."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
