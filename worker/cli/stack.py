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
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from config import Settings
from worker.cli.broker import URL_ENV, broker_for_session, private_state_dir
from worker.redis_server import LOG_FILE, EmbeddedRedis, die_with_parent, write_private

#: Flower's tornado config file (Python) holding basic auth; exists while Flower runs
FLOWER_CONFIG = "flower-config.py"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None


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
        argv = [sys.executable, "-m", "worker.cli", "worker", "--queues", queue]
        return self.spawn(f"worker-{queue}", argv, log_dir, env)

    def start_flower(self, log_dir: Path | None) -> Child:
        s = self.settings
        auth = s.flower_basic_auth.get_secret_value() if s.flower_basic_auth else None
        if not auth and s.flower_address not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(
                f"refusing to expose Flower on {s.flower_address} without "
                "MLWORKER_FLOWER_BASIC_AUTH=user:password"
            )
        argv = [
            sys.executable, "-m", "celery", "-A", "worker.app:app", "flower",
            f"--address={s.flower_address}", f"--port={s.flower_port}",
        ]  # fmt: skip
        if auth:  # in a 0600 file, not argv: any local user can read /proc/*/cmdline
            conf = private_state_dir(s) / FLOWER_CONFIG
            write_private(conf, f"basic_auth = {auth.split(',')!r}\n")  # as --basic-auth
            self.private_files.append(conf)
            argv.append(f"--conf={conf}")
        return self.spawn("flower", argv, log_dir, {})

    def start_metrics(self, log_dir: Path | None) -> Child:
        argv = [sys.executable, "-m", "worker.cli", "metrics"]
        return self.spawn("metrics", argv, log_dir, {})

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


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
