"""Worker start-to-ready seconds and RSS per worker after preload, per queue.

    .venv/bin/python -m bench.startup

Starts a private redis-server, then one ``mlworker worker --queues Q`` at a time (concurrency
1), timing from process start until the child has preloaded its models and answers a ping.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import psutil

from config import Settings
from tests.support import WorkerProcess
from worker.app import build_app
from worker.families import load_families
from worker.redis_server import EmbeddedRedis

MB = 1024 * 1024


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="mlworker-startup-"))
    with EmbeddedRedis(base / "redis") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLWORKER_")}
        env.update(
            MLWORKER_REDIS_URL=server.url,
            MLWORKER_STATE_DIR=str(base / "state"),
            MLWORKER_MODEL_CACHE_DIR=str(Path.cwd() / ".state" / "cache"),
            HF_HUB_OFFLINE="1",
        )
        app = build_app(Settings(redis_url=server.url))  # type: ignore[arg-type]
        print("| queue | start-to-ready s | parent RSS MB | child RSS MB (after preload) |")
        print("|---|---|---|---|")
        for queue in load_families().queues:
            worker = WorkerProcess(queue, env, base)
            started = time.perf_counter()
            worker.start(app)
            ready = time.perf_counter() - started
            assert worker.process is not None
            parent = psutil.Process(worker.process.pid).memory_info().rss / MB
            children = [c.memory_info().rss / MB for c in worker.children()]
            child_rss = ", ".join(f"{c:.0f}" for c in children)
            print(f"| {queue} | {ready:.1f} | {parent:.0f} | {child_rss} |")
            worker.stop()
        app.close()


if __name__ == "__main__":
    main()
