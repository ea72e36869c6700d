"""Oldest waiting message per queue: real kombu messages on the session's Redis, scraped.

The module uses its own Redis database, so no worker other tests started drains its queues.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from worker.app import build_app
from worker.families import load_families
from worker.family import DEAD_LETTER_QUEUE, UNROUTED_QUEUE
from worker.metrics import (
    FIRST_SEEN_KEY,
    PRIORITY_SUFFIXES,
    SENT_AT_HEADER,
    MetricsStore,
    build_registry,
)
from worker.redis_server import EmbeddedRedis

#: db of the session redis-server that only this module writes
AGE_DB = 11
#: slack for the time between a send and a scrape on a loaded test machine
TOLERANCE_S = 5.0
TAGS_TASK = "tasks.extract_tags"


class AgeStack:
    """This module's Redis db: its URL, a raw client, the mlworker app and the store."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url, self.env = url, env
        self.client = redis.Redis.from_url(url)
        fields = {
            k.removeprefix("MLWORKER_").lower(): v for k, v in env.items() if "MLWORKER_" in k
        }
        self.app = build_app(Settings(**fields))  # type: ignore[arg-type]
        self.store = MetricsStore(self.client)

    def ages(self) -> dict[str, float]:
        """``mlworker_queue_oldest_age_seconds`` per queue, as a scrape returns it."""
        body = generate_latest(build_registry(self.store, load_families().queues)).decode()
        return {
            sample.labels["queue"]: sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == "mlworker_queue_oldest_age_seconds"
        }

    def send(self, queue: str, **headers: Any) -> None:
        self.app.send_task(TAGS_TASK, kwargs={"text": "x"}, queue=queue, headers=headers or None)


@pytest.fixture
def stack(redis_server: EmbeddedRedis, worker_env: dict[str, str]) -> Iterator[AgeStack]:
    """A flushed Redis db with an mlworker app on it and no worker consuming."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{AGE_DB}"
    built = AgeStack(url, {**worker_env, "MLWORKER_REDIS_URL": url})
    built.client.flushdb()
    yield built
    gc.collect()
    built.app.close()
    built.client.close()


def test_stamped_messages_report_their_age_per_queue(stack: AgeStack) -> None:
    """A message's x-sent-at (dead letters: x-dead-at) gives its queue's age; empty means 0."""
    now = time.time()
    stack.send("tags", **{SENT_AT_HEADER: now - 120})  # the oldest, at the tail
    stack.send("tags", **{SENT_AT_HEADER: now - 30})
    stack.send(UNROUTED_QUEUE, **{SENT_AT_HEADER: now - 600})
    stack.send(DEAD_LETTER_QUEUE, **{SENT_AT_HEADER: now - 5000, "x-dead-at": now - 900})
    ages = stack.ages()
    assert set(ages) == {*load_families().queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE}
    assert 120 <= ages["tags"] < 120 + TOLERANCE_S
    assert 600 <= ages[UNROUTED_QUEUE] < 600 + TOLERANCE_S
    assert 900 <= ages[DEAD_LETTER_QUEUE] < 900 + TOLERANCE_S
    assert {ages[q] for q in load_families().queues if q != "tags"} == {0.0}
    stack.client.rpop("tags")  # a worker takes the oldest: the next one is the oldest now
    assert 30 <= stack.ages()["tags"] < 30 + TOLERANCE_S


def test_the_app_stamps_every_message_it_sends(stack: AgeStack) -> None:
    """mlworker's app stamps x-sent-at at publish; a fresh job's age starts near 0."""
    before = time.time()
    stack.app.send_task(TAGS_TASK, kwargs={"text": "x"})  # routed by task name
    raw = stack.client.lindex("tags", -1)
    assert raw is not None
    stamp = json.loads(raw)["headers"][SENT_AT_HEADER]
    assert before <= stamp <= time.time()
    assert 0 <= stack.ages()["tags"] < TOLERANCE_S


def test_priority_lists_count_toward_their_queue(stack: AgeStack) -> None:
    """A message waiting in a kombu priority list ("tags\\x06\\x169") ages its queue."""
    now = time.time()
    stack.app.send_task(
        TAGS_TASK, kwargs={"text": "x"}, queue="tags", priority=9,
        headers={SENT_AT_HEADER: now - 300},
    )  # fmt: skip
    stack.send("tags", **{SENT_AT_HEADER: now - 10})
    lengths = {sfx: stack.client.llen("tags" + sfx) for sfx in PRIORITY_SUFFIXES}
    assert lengths[""] == 1 and sum(lengths.values()) == 2  # the priority one is elsewhere
    assert 300 <= stack.ages()["tags"] < 300 + TOLERANCE_S


def test_a_foreign_message_ages_from_when_the_exporter_first_saw_it(stack: AgeStack) -> None:
    """A message from a plain Celery client (no x-sent-at) is 0 at first sight, then grows."""
    foreign = Celery("foreign", broker=stack.url)
    try:
        foreign.send_task(TAGS_TASK, kwargs={"text": "x"}, queue=UNROUTED_QUEUE)
    finally:
        foreign.close()
    raw = stack.client.lindex(UNROUTED_QUEUE, -1)
    assert raw is not None and SENT_AT_HEADER.encode() not in raw
    assert stack.ages()[UNROUTED_QUEUE] < TOLERANCE_S
    time.sleep(2.0)
    assert 2.0 <= stack.ages()[UNROUTED_QUEUE] < 2.0 + TOLERANCE_S
    # a second exporter (a restart, a replica) agrees: the record is in Redis
    other = MetricsStore(redis.Redis.from_url(stack.url))
    assert other.oldest_ages([UNROUTED_QUEUE])[UNROUTED_QUEUE] >= 2.0
    other.client.close()
    stack.client.rpop(UNROUTED_QUEUE)
    assert stack.ages()[UNROUTED_QUEUE] == 0.0
    assert not stack.client.hgetall(FIRST_SEEN_KEY)  # forgotten once the queue is empty


def test_reading_ages_takes_one_lindex_per_list_whatever_the_depth(stack: AgeStack) -> None:
    """A scrape reads the tail of each list only (LINDEX), never the whole queue."""
    pipe = stack.client.pipeline()
    for i in range(2000):
        pipe.lpush("tags", f"not json {i}")
    pipe.execute()

    def calls(command: str) -> int:
        stats = stack.client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    before = {cmd: calls(cmd) for cmd in ("lindex", "lrange")}
    queues = [*load_families().queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE]
    ages = stack.store.oldest_ages(queues)
    assert calls("lindex") - before["lindex"] == len(queues) * len(PRIORITY_SUFFIXES)
    assert calls("lrange") == before["lrange"]
    assert ages["tags"] < TOLERANCE_S  # not a kombu message: first seen now


def test_status_shows_the_oldest_age_next_to_the_depth(stack: AgeStack) -> None:
    """``mlworker status`` prints each queue's depth and its oldest message's age."""
    stack.send("tags", **{SENT_AT_HEADER: time.time() - 3600})
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status"],
        env=stack.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "oldest" in out.stdout
    row = next(line for line in out.stdout.splitlines() if " tags " in line)
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    assert cells[:2] == ["tags", "1"]
    assert 3600 <= int(cells[2].removesuffix("s")) < 3600 + TOLERANCE_S
