"""Flower as ``mlworker up`` runs it: ``python -m worker.flower [flower options]``.

Flower 2.2's broker page lists only the queues that live workers report consuming (and the
app's declared queues only while no worker is known), so ``dead_letter`` -- which no worker
consumes -- never shows, nor a queue whose worker started after Flower's first look. Here the
page lists the union: every queue the app declares (``task_queues``, the dead letters and
the unrouted ``celery`` queue included) plus whatever workers report.
"""

from __future__ import annotations

import sys
from typing import Any


def every_queue_name(handler: Any, reported: list[str]) -> list[str]:
    """Queues the workers report, plus every queue the app declares, sorted."""
    conf = handler.capp.conf
    declared = {q.name for q in conf.task_queues or [] if q.name}
    return sorted(set(reported) | declared | {conf.task_default_queue})


def install() -> None:
    """Make Flower's broker page (and its queue-length API) list ``every_queue_name``."""
    from flower.views import BaseHandler

    reported_only = BaseHandler.get_active_queue_names

    def active_queue_names(self: Any) -> list[str]:
        return every_queue_name(self, reported_only(self))

    BaseHandler.get_active_queue_names = active_queue_names  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    install()
    from worker.app import app

    app.start(argv=["flower", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
