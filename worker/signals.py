"""Worker lifecycle hooks: learn the consumed queues in the parent, preload in each child."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from config import get_settings
from worker.registry import configure_threads, registry

log = logging.getLogger(__name__)

#: queues this worker consumes; set in the parent, inherited by forked children
consumed_queues: set[str] = set()


@signals.celeryd_init.connect
def _recover_held_messages(**_: Any) -> None:
    """Workers put back messages they held when the broker went away (worker.recovery)."""
    from worker.recovery import install

    install()


@signals.celeryd_after_setup.connect
def _remember_queues(sender: Any, instance: Any, **_: Any) -> None:
    consumed_queues.update(instance.app.amqp.queues.consume_from or ())
    if not consumed_queues:
        consumed_queues.update(instance.app.amqp.queues)


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Cap threads, then load this worker's models before the child takes its first job."""
    settings = get_settings()
    registry.configure(settings)
    configure_threads(settings.child_threads())
    if settings.preload:
        names = registry.names_for_queues(consumed_queues)
        log.info("preloading %s for queues %s", names, sorted(consumed_queues))
        registry.preload(names)
    log.info("mlworker child ready pid=%d models=%s", os.getpid(), registry.loaded_names())


import worker.logs  # noqa: E402,F401  (JSON log lines when not a terminal, secrets redacted)
import worker.shutdown  # noqa: E402,F401  (SIGTERM: finish within shutdown_grace_s, then cold)
import worker.telemetry  # noqa: E402,F401  (one log line and metrics per job, model loads, RSS)
