"""Give back the messages a worker held when its Redis connection died.

kombu's Redis transport keeps every delivered, unacked message in an ``unacked`` hash; a
channel that closes cleanly puts its messages back on their queue. When the broker
connection is *lost* (Redis restarted, network cut) Celery collects the dead connection
without that restore, drops its reserved requests and celery-batches' buffer, and the
messages wait in the hash until ``visibility_timeout`` — which must exceed the longest time
limit (an hour here). Measured before this module: 130 of 300 tag jobs stuck after a 5 s
Redis restart.

``RecoveringQoS`` remembers every QoS (one per channel) of this process. When the worker's
poll loop on the *new* connection asks for visible messages (every few seconds), the
unacked tags of QoS objects from older connections are restored by tag on the new one. A
job that finished in the meantime has no unacked entry left, so its tag restores nothing;
a job whose result is already stored is not run twice (``worker.jobs``/``worker.batching``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_instances: weakref.WeakSet[Any] = weakref.WeakSet()


class RecoveringQoS(kombu_redis.QoS):  # type: ignore[misc]
    """Redis QoS that restores, over a live connection, what dead connections held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _instances.add(self)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        self.restore_orphaned()
        return super().restore_visible(start, num, interval)

    def held_tags(self) -> list[str]:
        return [tag for tag in self._delivered if tag not in self._dirty]

    def restore_orphaned(self) -> int:
        """Restore the unacked messages of QoS objects whose connection is gone."""
        live = self.channel.connection
        orphans = [q for q in list(_instances) if q.channel.connection is not live]
        restored = 0
        for qos in orphans:
            tags = qos.held_tags()
            if tags:
                with self.channel.conn_or_acquire() as client:
                    for tag in tags:
                        self.restore_by_tag(tag, client=client)
                restored += len(tags)
            qos._delivered.clear()
            _instances.discard(qos)
        if restored:
            log.warning("restored %d messages held when the broker connection was lost", restored)
        return restored


def install() -> None:
    """Use ``RecoveringQoS`` for Redis channels in this (worker) process."""
    kombu_redis.Channel.QoS = RecoveringQoS
