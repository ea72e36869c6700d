"""A message popped from its queue when the broker dies, before kombu records it as unacked,
goes back on its queue once the worker's transport is connected again (``worker.recovery``).

Real parts only: a persistent embedded Redis stopped and started on its port, kombu's Redis
transport with the worker's QoS installed, messages published and fetched through kombu.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from worker import recovery
from worker.redis_server import EmbeddedRedis

QUEUE = Queue("recovery-q", Exchange("recovery-x", type="direct"), routing_key="recovery-q")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A persistent Redis of this test alone (the kombu bindings survive its restart)."""
    with EmbeddedRedis(tmp_path / "redis", persistence=True) as started:
        yield started


@pytest.fixture(autouse=True)
def worker_qos() -> Iterator[None]:
    """The worker's QoS on kombu's Redis channels, as the worker entry installs it."""
    before = kombu_redis.Channel.QoS
    recovery.install()
    yield
    kombu_redis.Channel.QoS = before


def _publish(url: str, bodies: list[str]) -> None:
    with Connection(url) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish({"body": body}, exchange=QUEUE.exchange, routing_key="recovery-q",
                             declare=[QUEUE])  # fmt: skip


def _popped_then_broker_gone(server: EmbeddedRedis, channel: Any) -> Any:
    """Pop the next message as kombu's ``BRPOP`` does, then lose the broker before the
    unacked record is written: what ``append`` gets when Redis dies inside the window."""
    client = redis.Redis.from_url(server.url)
    raw = client.rpop("recovery-q")
    assert raw is not None
    server.stop()
    return channel.Message(json.loads(raw), channel=channel)


def test_message_popped_when_the_broker_died_goes_back_on_its_queue(
    server: EmbeddedRedis,
) -> None:
    """The record fails with a connection error (kombu would drop the message); on the new
    connection the message is on its queue again, once, and no unacked record is left."""
    _publish(server.url, ["first", "second"])
    with Connection(server.url) as old:
        channel = old.default_channel
        message = _popped_then_broker_gone(server, channel)
        with pytest.raises(recovery.BROKER_DOWN):
            channel.qos.append(message, message.delivery_tag)
        server.start()
        with Connection(server.url) as new:
            restored = new.default_channel.qos.restore_orphaned()
            assert restored == 1
            client = redis.Redis.from_url(server.url)
            assert client.llen("recovery-q") == 2
            assert client.hlen("unacked") == 0
            bodies = []
            with new.SimpleQueue(QUEUE) as queue:
                for _ in range(2):
                    got = queue.get(timeout=5)
                    bodies.append(got.payload["body"])
                    got.ack()
            assert sorted(bodies) == ["first", "second"]
            assert new.default_channel.qos.restore_orphaned() == 0  # put back once only


def test_a_record_written_after_all_is_moved_back_not_doubled(server: EmbeddedRedis) -> None:
    """When the unacked record reached Redis though the reply did not, the restore moves that
    record to the queue: the message is on its queue once and the record is gone."""
    _publish(server.url, ["only"])
    with Connection(server.url) as old:
        channel = old.default_channel
        client = redis.Redis.from_url(server.url)
        raw = client.rpop("recovery-q")
        assert raw is not None
        message = channel.Message(json.loads(raw), channel=channel)
        tag = message.delivery_tag
        record = json.dumps([message._raw, "recovery-x", "recovery-q"])
        client.hset("unacked", tag, record)
        client.zadd("unacked_index", {tag: 1.0})
        channel.qos._unrecorded[tag] = (message._raw, "recovery-x", "recovery-q")
        server.stop()
        server.start()
        with Connection(server.url) as new:
            assert new.default_channel.qos.restore_orphaned() == 1
            client = redis.Redis.from_url(server.url)
            assert client.llen("recovery-q") == 1
            assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
