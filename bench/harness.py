"""What every scenario shares: a private Redis, bench workers, an RSS sampler and progress lines.

A ``Stack`` owns one ``EmbeddedRedis`` for the whole run; each scenario starts the workers it
needs through ``Stack.worker`` (the real ``mlworker worker`` CLI, or a bench entry point that
adds a bench-only task) and stops them before the next one, so scenarios never share cores.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from celery import Celery

from config import Settings
from tests.support import WorkerProcess
from worker.app import build_app
from worker.redis_server import EmbeddedRedis

MB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
#: joined bundled whisper model, shared with the tests so the bench never rebuilds it
MODEL_CACHE = REPO / ".state" / "cache"
#: RSS sampling period for the RSS-over-time plot: fine enough to see a batch, cheap on 2 cores
RSS_INTERVAL_S = 0.5

_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One progress line with the run's elapsed time, flushed at once."""
    elapsed = time.perf_counter() - _T0
    print(f"[{elapsed // 60:02.0f}:{elapsed % 60:04.1f}] {message}", flush=True)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "mean": statistics.fmean(values),
        "n": float(len(values)),
    }


@dataclass
class RssSampler:
    """Samples RSS of every running bench worker (parent and children) on a daemon thread."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    _workers: dict[str, WorkerProcess] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RssSampler:
        threading.Thread(target=self._run, name="bench-rss", daemon=True).start()
        return self

    def watch(self, label: str, worker: WorkerProcess) -> None:
        self._workers[label] = worker

    def forget(self, label: str) -> None:
        self._workers.pop(label, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            now = round(time.perf_counter() - _T0, 2)
            for label, worker in list(self._workers.items()):
                sample = worker_rss(worker)
                if sample:
                    self.samples.append({"t": now, "worker": label, **sample})


def worker_rss(worker: WorkerProcess) -> dict[str, float]:
    """RSS of a worker's parent and children, and their summed USS (what the worker adds)."""
    if worker.process is None or worker.process.poll() is not None:
        return {}
    try:
        parent = psutil.Process(worker.process.pid)
        children = parent.children(recursive=True)
        child_rss = [c.memory_info().rss / MB for c in children]
        uss = sum(p.memory_full_info().uss for p in [parent, *children]) / MB
        return {
            "parent_mb": round(parent.memory_info().rss / MB, 1),
            "child_mb": round(max(child_rss, default=0.0), 1),
            "children": float(len(children)),
            "total_uss_mb": round(uss, 1),
        }
    except psutil.Error:
        return {}


class BenchWorker(WorkerProcess):
    """A worker started from ``module`` (``worker.cli`` or a bench entry point); with
    ``tree``, the code of that checkout (another commit's ``git worktree``) runs it."""

    def __init__(
        self,
        module: str,
        queues: str,
        env: dict[str, str],
        log_dir: Path,
        tree: Path | None = None,
        **kw: Any,
    ):
        if tree is not None:
            env = {**env, "PYTHONPATH": str(tree)}
        super().__init__(queues, env, log_dir, **kw)
        self.module = module
        self.tree = tree
        self.ready_s = 0.0

    def start(self, app: Celery, timeout: float = 240.0) -> BenchWorker:
        cmd = [
            sys.executable, "-m", self.module, "worker",
            "--queues", self.queues,
            "--concurrency", str(self.concurrency),
            "--hostname", self.hostname,
            "--loglevel", "INFO",
        ]  # fmt: skip
        started = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=self.tree,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(app, timeout)
        self.ready_s = time.perf_counter() - started
        return self


class Stack:
    """One private Redis for the whole run, the Celery app on it, and bench workers."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mlworker-bench-"))
        self.input_root = self.base / "input"
        self.output_root = self.base / "output"
        self.input_root.mkdir()
        self.redis = EmbeddedRedis(self.base / "redis-data")
        self.rss = RssSampler()
        self.app: Celery | None = None

    def __enter__(self) -> Stack:
        self.redis.start()
        settings = Settings(redis_url=self.redis.url, input_root=self.input_root)  # type: ignore[arg-type]
        self.app = build_app(settings)
        self.rss.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.rss.stop()
        gc.collect()  # AsyncResults' __del__ talks to Redis; free them while it is up
        if self.app is not None:
            self.app.close()
        self.redis.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def celery(self) -> Celery:
        assert self.app is not None
        return self.app

    def env(self, **overrides: str) -> dict[str, str]:
        """The worker environment: this run's Redis and paths, no stray MLWORKER_ settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLWORKER_")}
        env.update(
            MLWORKER_REDIS_URL=self.redis.url,
            MLWORKER_STATE_DIR=str(self.base / "state"),
            MLWORKER_INPUT_ROOT=str(self.input_root),
            MLWORKER_OUTPUT_ROOT=str(self.output_root),
            MLWORKER_MODEL_CACHE_DIR=str(MODEL_CACHE),
            MLWORKER_METRICS_ENABLED="false",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.update(overrides)
        return env

    @contextmanager
    def worker(
        self,
        label: str,
        queue: str,
        *,
        concurrency: int = 1,
        module: str = "worker.cli",
        tree: Path | None = None,
        **env: str,
    ) -> Iterator[BenchWorker]:
        """A started worker, watched by the RSS sampler, stopped (and queues purged) after;
        ``tree``: another checkout whose code the worker runs."""
        progress(f"  starting worker {label} ({queue}, concurrency {concurrency})")
        worker = BenchWorker(
            module, queue, self.env(**env), self.base, tree=tree, concurrency=concurrency
        )
        worker.start(self.celery)
        progress(f"  worker {label} ready in {worker.ready_s:.1f} s")
        self.rss.watch(label, worker)
        try:
            yield worker
        finally:
            self.rss.forget(label)
            gc.collect()
            worker.stop()
            self.celery.control.purge()
