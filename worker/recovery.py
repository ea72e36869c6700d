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

kombu pops a message (``BRPOP``) before it records it as unacked (``HSET``). When the
broker dies between the two, the record fails and kombu drops the message, which is then in
no Redis structure at all. ``RecoveringQoS.append`` keeps such a message (it was read, so
the worker still has it) and the live connection puts it back on its queue with the rest;
if the record was written after all (the reply was lost, not the write), that record is
moved back instead, so the message goes back once. Only a ``BRPOP`` whose reply never
reached the worker is still lost (README, Reliability).
"""

from __future__ import annotations

import json
import logging
import weakref
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_instances: weakref.WeakSet[Any] = weakref.WeakSet()
#: errors that mean Redis went away (a batch mid-run, a record mid-write)
BROKER_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


class RecoveringQoS(kombu_redis.QoS):  # type: ignore[misc]
    """Redis QoS that restores, over a live connection, what dead connections held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: delivery tag -> (payload, exchange, routing key) of messages popped from their
        #: queue whose unacked record could not be written: the broker went away between
        self._unrecorded: dict[str, tuple[Any, str, str]] = {}
        _instances.add(self)

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except BROKER_DOWN:
            delivery = message.delivery_info
            self._unrecorded[delivery_tag] = (
                message._raw,
                delivery["exchange"],
                delivery["routing_key"],
            )
            raise

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
            unrecorded = dict(qos._unrecorded)
            if tags or unrecorded:
                with self.channel.conn_or_acquire() as client:
                    for tag in tags:
                        self.restore_by_tag(tag, client=client)
                    for tag, message in unrecorded.items():
                        self._restore_unrecorded(tag, message, client)
                restored += len(tags) + len(unrecorded)
            qos._delivered.clear()
            qos._unrecorded.clear()
            _instances.discard(qos)
        if restored:
            log.warning("restored %d messages held when the broker connection was lost", restored)
        return restored

    def _restore_unrecorded(self, tag: str, message: tuple[Any, str, str], client: Any) -> None:
        """Put back a message popped but never recorded as unacked: its record if the write
        went through after all (moved as ``restore_by_tag`` moves one), else the message as
        it was read; in one transaction, so it goes back once."""

        def put_back(pipe: Any) -> None:
            recorded = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            payload, exchange, routing_key = json.loads(recorded) if recorded else message
            self.channel._do_restore_message(payload, exchange, routing_key, pipe)

        client.transaction(put_back, self.unacked_key)


def install() -> None:
    """Use ``RecoveringQoS`` for Redis channels in this (worker) process."""
    kombu_redis.Channel.QoS = RecoveringQoS
