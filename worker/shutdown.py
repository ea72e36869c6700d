"""SIGTERM with a deadline: a warm shutdown that turns cold after ``shutdown_grace_s``.

Celery's warm shutdown (SIGTERM) stops consuming and waits, with no limit, for running jobs.
Messages that were reserved but not started (prefetched, or held in a celery-batches
buffer) are unacked, and kombu's Redis transport puts every unacked message back on its
queue when the channel closes. What Celery lacks is the bound: if the running job or batch
is still going after the grace time, this sends the worker SIGQUIT (cold shutdown), which
terminates the children; their messages go back to the queue (``reject_on_worker_lost`` and
kombu's restore) and run again elsewhere.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery import signals

from config import get_settings

log = logging.getLogger(__name__)

_armed = threading.Event()


def _escalate(grace_s: float) -> None:
    time.sleep(grace_s)
    log.warning("jobs still running %.0fs after SIGTERM: cold shutdown, they are requeued", grace_s)
    os.kill(os.getpid(), signal.SIGQUIT)


def _bound_warm_shutdown(how: str = "", **_: Any) -> None:
    """Start the grace timer once, on the first warm shutdown signal (MainProcess only)."""
    if how != "Warm" or _armed.is_set():
        return
    _armed.set()
    grace_s = get_settings().shutdown_grace_s
    threading.Thread(
        target=_escalate, args=(grace_s,), name="mlworker-shutdown-grace", daemon=True
    ).start()


def install() -> None:
    """Bound this worker's warm shutdown by ``shutdown_grace_s``."""
    signals.worker_shutting_down.connect(_bound_warm_shutdown, dispatch_uid="mlworker-shutdown")
