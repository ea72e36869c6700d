"""Real processes for tests: a worker started through the ``mlworker`` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from celery import Celery


class WorkerProcess:
    """``mlworker worker --queues ...`` as a child process with its log in a file."""

    def __init__(
        self,
        queues: str,
        env: dict[str, str],
        log_dir: Path,
        concurrency: int = 1,
        program: str = "mlworker",
    ):
        self.queues = queues
        self.program = program
        self.concurrency = concurrency
        self.env = env
        self.hostname = f"test-{queues.replace(',', '-')}-{uuid.uuid4().hex[:6]}@localhost"
        self.log_path = log_dir / f"{self.hostname.split('@')[0]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, app: Celery, timeout: float = 180.0) -> WorkerProcess:
        entry = ["worker.cli", "worker"]
        if self.program == "celery":  # the contract: both entry points behave the same
            entry = ["celery", "-A", "worker.app:app", "worker"]
        cmd = [
            sys.executable, "-m", *entry,
            "--queues", self.queues,
            "--concurrency", str(self.concurrency),
            "--hostname", self.hostname,
            "--loglevel", "INFO",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready(app, timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, app: Celery, timeout: float) -> None:
        """Ready = answers a control ping and every child logged that its models loaded."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"worker exited {code}:\n{self.log()[-4000:]}")
            ready_children = self.log().count("mlworker child ready")
            if ready_children >= self.concurrency and app.control.ping(
                destination=[self.hostname], timeout=0.5
            ):
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker {self.hostname} not ready:\n{self.log()[-4000:]}")

    def children(self) -> list[psutil.Process]:
        assert self.process is not None
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Warm shutdown (SIGTERM) and wait; SIGKILL the group if it does not exit."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


#: states after which a job's stored record no longer changes
FINAL_STATES = ("SUCCESS", "FAILURE")


def stored_meta(client: Any, job_id: str) -> dict[str, Any]:
    """The result record Celery's redis backend keeps for ``job_id``, as raw JSON ({} if none)."""
    raw = client.get(f"celery-task-meta-{job_id}")
    return dict(json.loads(raw)) if raw else {}


def wait_final_meta(client: Any, job_id: str, timeout: float) -> dict[str, Any]:
    """``stored_meta`` once it reaches a final state, or {} after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = stored_meta(client, job_id)
        if meta.get("status") in FINAL_STATES:
            return meta
        time.sleep(0.2)
    return {}
