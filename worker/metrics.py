"""Prometheus metrics Flower lacks: queue depth, batches, job durations, model loads, RSS.

Workers aggregate in Redis rather than with prometheus-client's multiprocess mode. Workers
run one per container or pod (``docker compose --scale``, one Deployment per queue), and
multiprocess mode only sums processes that share one ``PROMETHEUS_MULTIPROC_DIR`` on one
filesystem: every replica would be a scrape target of its own, and recycled prefork children
leave files to clean up. Every worker already reaches Redis, so each child adds its
observations to one hash (one pipelined round trip per job or batch) and ``mlworker
metrics`` turns that hash, the per-process RSS keys and ``LLEN`` of each queue into metric
families at scrape time: one target however many workers there are.

The oldest waiting message's age reads one message per list (``LINDEX -1``: kombu LPUSHes
and consumers BRPOP, so the tail is the oldest), never the whole queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from config import Settings, get_settings
from worker.family import DEAD_LETTER_QUEUE, UNROUTED_QUEUE

log = logging.getLogger(__name__)

#: hash of every counter and histogram part, field = JSON [name, label values, part]
METRICS_KEY = "mlworker:metrics"
#: one hash per worker child: RSS, node name, queues, models
PROCESS_KEY_PREFIX = "mlworker:metrics:process:"
#: a child refreshes its key every PROCESS_HEARTBEAT_S; a dead child drops out within the TTL
PROCESS_TTL_S = 60
PROCESS_HEARTBEAT_S = 15.0
#: kombu's Redis transport keeps priority 3/6/9 messages in "<queue>\x06\x16<n>" lists
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
#: kombu's hash of delivered-but-unacked messages (reserved, buffered or running)
UNACKED_KEY = "unacked"
#: epoch seconds mlworker's app stamps on every message it publishes (``worker.app``)
SENT_AT_HEADER = "x-sent-at"
#: epoch seconds ``worker.delivery`` stamps on a message it parks on the dead-letter queue
DEAD_AT_HEADER = "x-dead-at"
#: per list, the unstamped tail message the exporter first saw and when: JSON [id, time]
FIRST_SEEN_KEY = "mlworker:metrics:first_seen"


@dataclass(frozen=True)
class Spec:
    """One metric workers record: name, type, help text, label names, histogram buckets."""

    name: str
    kind: Literal["counter", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


#: job durations span tag requests (ms) to AutoML searches (an hour)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
JOB_DURATION = Spec(
    "mlworker_job_duration_seconds",
    "histogram",
    "Time one job spent running in a worker child (a batched request: its batch's run).",
    ("family", "mode"),
    DURATION_BUCKETS,
)
JOBS = Spec("mlworker_jobs", "counter", "Jobs finished, by outcome.", ("family", "mode", "outcome"))
LIGHTWEIGHT_JOBS = Spec(
    "mlworker_lightweight_jobs",
    "counter",
    "Jobs the memory guard ran in lightweight mode.",
    ("family",),
)
GUARD_REFUSALS = Spec(
    "mlworker_memory_guard_refusals",
    "counter",
    "Jobs failed with InsufficientMemory (memory guard refused or even lightweight ran out).",
    ("family",),
)
#: powers of two up to the largest batch size a deployment is likely to configure
BATCH_SIZE = Spec(
    "mlworker_batch_size",
    "histogram",
    "Requests per flushed batch.",
    ("family",),
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_FLUSHES = Spec(
    "mlworker_batch_flushes",
    "counter",
    "Batch flushes by reason: full (flush_every reached) or interval (timer: idle or max wait).",
    ("family", "reason"),
)
#: a bundled MiniLM loads in about a second, whisper models in seconds to a minute
MODEL_LOAD = Spec(
    "mlworker_model_load_seconds",
    "histogram",
    "Time to load a model into a worker child.",
    ("model",),
    (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
VECTOR_CACHE_LOOKUPS = Spec(
    "mlworker_tag_vector_cache_lookups",
    "counter",
    "Candidate phrases looked up in the tags children's vector caches: hit (not embedded "
    "again) or miss.",
    ("result",),
)
SPECS = {spec.name: spec for spec in (JOB_DURATION, JOBS, LIGHTWEIGHT_JOBS, GUARD_REFUSALS,
                                      BATCH_SIZE, BATCH_FLUSHES, MODEL_LOAD,
                                      VECTOR_CACHE_LOOKUPS)}  # fmt: skip


@dataclass(frozen=True)
class Observation:
    """A counter increment or a histogram sample."""

    spec: Spec
    labels: tuple[str, ...]
    value: float = 1.0


def _field(name: str, labels: Sequence[str], part: str) -> str:
    return json.dumps([name, list(labels), part], separators=(",", ":"))


def _bucket(spec: Spec, value: float) -> str:
    """The ``le`` of the first bucket holding ``value`` (stored per bucket, summed on read)."""
    for bound in spec.buckets:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


class MetricsStore:
    """Workers' observations and process gauges in Redis; the exporter reads them back."""

    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or get_settings()

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> MetricsStore:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, settings)

    def record(self, observations: Iterable[Observation]) -> None:
        """Add observations in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for obs in observations:
            spec = obs.spec
            if spec.kind == "counter":
                pipe.hincrbyfloat(METRICS_KEY, _field(spec.name, obs.labels, "value"), obs.value)
                continue
            pipe.hincrbyfloat(METRICS_KEY, _field(spec.name, obs.labels, "sum"), obs.value)
            pipe.hincrby(METRICS_KEY, _field(spec.name, obs.labels, "count"), 1)
            le = _bucket(spec, obs.value)
            pipe.hincrby(METRICS_KEY, _field(spec.name, obs.labels, f"le={le}"), 1)
        pipe.execute()

    def heartbeat(
        self,
        node: str,
        queues: Sequence[str],
        models: Sequence[str],
        rss: int,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Publish this child's RSS and ``extra`` fields (expires unless refreshed)."""
        key = f"{PROCESS_KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"
        fields = {
            "node": node,
            "pid": str(os.getpid()),
            "queues": ",".join(sorted(queues)),
            "models": ",".join(sorted(models)),
            "rss_bytes": str(rss),
            # this child's own guard thresholds: workers of one queue may differ from another's
            "soft_rss_bytes": str(self.settings.memory_soft_rss_mb * 1024 * 1024),
            "hard_rss_bytes": str(self.settings.memory_hard_rss_mb * 1024 * 1024),
            **(extra or {}),
        }
        pipe = self.client.pipeline(transaction=False)
        for name, value in fields.items():
            pipe.hset(key, name, value)
        pipe.expire(key, PROCESS_TTL_S)
        pipe.execute()

    def forget_process(self) -> None:
        self.client.delete(f"{PROCESS_KEY_PREFIX}{socket.gethostname()}:{os.getpid()}")

    def processes(self) -> list[dict[str, str]]:
        """Live worker children as the heartbeat hashes describe them."""
        keys = list(self.client.scan_iter(match=f"{PROCESS_KEY_PREFIX}*", count=500))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        found = []
        for raw in pipe.execute():
            if raw:
                found.append({k.decode(): v.decode() for k, v in raw.items()})
        return found

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        """LLEN of each queue, its priority lists included, plus the unacked count."""
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        pipe.hlen(UNACKED_KEY)
        counts = pipe.execute()
        steps = len(PRIORITY_SUFFIXES)
        depths = {q: sum(counts[i * steps : (i + 1) * steps]) for i, q in enumerate(queues)}
        depths[UNACKED_KEY] = counts[-1]
        return depths

    def oldest_ages(self, queues: Sequence[str], now: float | None = None) -> dict[str, float]:
        """Seconds the oldest waiting message of each queue has waited (0 when empty).

        O(1) per queue: ``LINDEX -1`` of the queue and of each priority list, two round trips.
        """
        now = time.time() if now is None else now
        lists = [(queue, queue + suffix) for queue in queues for suffix in PRIORITY_SUFFIXES]
        pipe = self.client.pipeline(transaction=False)
        for _, name in lists:
            pipe.lindex(name, -1)
        pipe.hgetall(FIRST_SEEN_KEY)
        *tails, raw_seen = pipe.execute()
        seen = {k.decode(errors="replace"): v for k, v in raw_seen.items()}
        ages: dict[str, float] = dict.fromkeys(queues, 0.0)
        update = self.client.pipeline(transaction=False)
        for (queue, name), tail in zip(lists, tails, strict=True):
            if tail is None:
                if name in seen:
                    update.hdel(FIRST_SEEN_KEY, name)
                continue
            message_id, since = tail_identity(tail)
            if since is None:
                since = _first_seen(seen.get(name), message_id)
                if since is None:
                    since = now
                    update.hset(FIRST_SEEN_KEY, name, json.dumps([message_id, now]))
            elif name in seen:
                update.hdel(FIRST_SEEN_KEY, name)
            ages[queue] = max(ages[queue], now - since, 0.0)
        update.execute()
        return ages

    def recorded(self) -> dict[tuple[str, tuple[str, ...], str], float]:
        """Every stored counter value and histogram part."""
        values: dict[tuple[str, tuple[str, ...], str], float] = {}
        for raw_field, raw_value in self.client.hgetall(METRICS_KEY).items():
            try:
                name, labels, part = json.loads(raw_field)
                values[(name, tuple(labels), part)] = float(raw_value)
            except (ValueError, TypeError):
                log.debug("ignoring malformed metrics field %r", raw_field)
        return values


def tail_identity(raw: bytes) -> tuple[str, float | None]:
    """A queued kombu message's identity and, when it says so, since when it has waited.

    The time comes from the message itself: ``x-dead-at`` on a dead letter (its wait there
    began when it was parked), else ``x-sent-at``, which mlworker's app stamps at publish
    (Celery's protocol 2 carries no sent time). A message from another client has neither;
    the caller then falls back to when the exporter first saw it at the tail, an
    underestimate that still grows while the queue is stuck, which is what an alert needs.
    ``eta`` is not used: it says when a job may run, not when it was sent, and workers take
    eta jobs off the queue at once to hold them.
    """
    try:
        message = json.loads(raw)
        headers = message.get("headers") or {}
        properties = message.get("properties") or {}
        # kombu gives every published message a delivery tag; a restored one keeps it
        identity = str(properties.get("delivery_tag") or headers.get("id") or "")
        for header in (DEAD_AT_HEADER, SENT_AT_HEADER):
            if isinstance(headers.get(header), int | float):
                return identity, float(headers[header])
    except (ValueError, TypeError, AttributeError, RecursionError):
        identity = ""
    # a stable digest, so that every exporter replica and restart names it alike
    return identity or hashlib.sha256(raw).hexdigest(), None


def _first_seen(stored: bytes | None, message_id: str) -> float | None:
    """When the exporter first saw ``message_id`` at this tail, if the record is its."""
    if stored is None:
        return None
    try:
        seen_id, seen_at = json.loads(stored)
        return float(seen_at) if seen_id == message_id else None
    except (ValueError, TypeError):
        return None


def _families(recorded: dict[tuple[str, tuple[str, ...], str], float]) -> Iterator[Metric]:
    """Counter and histogram families from the stored parts (buckets made cumulative)."""
    grouped: dict[str, dict[tuple[str, ...], dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for (name, labels, part), value in recorded.items():
        grouped[name][labels][part] = value
    for spec in SPECS.values():
        series = grouped.get(spec.name, {})
        if spec.kind == "counter":
            counter = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, parts in sorted(series.items()):
                counter.add_metric(list(labels), parts.get("value", 0.0))
            yield counter
            continue
        histogram = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels, parts in sorted(series.items()):
            running, buckets = 0.0, []
            for bound in (*(repr(float(b)) for b in spec.buckets), "+Inf"):
                running += parts.get(f"le={bound}", 0.0)
                buckets.append((bound, running))
            histogram.add_metric(list(labels), buckets, parts.get("sum", 0.0))
        yield histogram


class MlworkerCollector(Collector):
    """Reads Redis at scrape time: queue depths, worker processes, recorded observations."""

    def __init__(self, store: MetricsStore, queues: Sequence[str]) -> None:
        self.store = store
        self.queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mlworker_redis_up", "1 if the exporter could read Redis.")
        try:
            every_queue = [*self.queues, UNROUTED_QUEUE, DEAD_LETTER_QUEUE]
            depths = self.store.queue_depths(every_queue)
            ages = self.store.oldest_ages(every_queue)
            processes = self.store.processes()
            recorded = self.store.recorded()
        except redis.RedisError as exc:
            log.warning("metrics scrape could not read Redis: %r", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._queue_families(depths)
        oldest = GaugeMetricFamily(
            "mlworker_queue_oldest_age_seconds",
            "Seconds the oldest waiting message of a queue has waited (0 when empty); "
            "messages from other clients count from when the exporter first saw them.",
            labels=["queue"],
        )
        for queue, age in ages.items():
            oldest.add_metric([queue], age)
        yield oldest
        yield from self._process_families(processes)
        yield from _families(recorded)

    def _queue_families(self, depths: dict[str, int]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "mlworker_queue_depth", "Messages waiting in a family queue.", labels=["queue"]
        )
        for queue in self.queues:
            depth.add_metric([queue], depths[queue])
        yield depth
        yield GaugeMetricFamily(
            "mlworker_unrouted_depth",
            "Messages waiting in Celery's default queue (sent without mlworker's routes); "
            "workers pass them on to their family queues, so this stays near 0 while any "
            "worker runs.",
            value=depths[UNROUTED_QUEUE],
        )
        yield GaugeMetricFamily(
            "mlworker_dead_letter_depth",
            "Messages in the dead-letter queue.",
            value=depths[DEAD_LETTER_QUEUE],
        )
        yield GaugeMetricFamily(
            "mlworker_unacked_messages",
            "Messages delivered to workers and not yet acked (prefetched, buffered, running).",
            value=depths[UNACKED_KEY],
        )

    def _process_families(self, processes: list[dict[str, Any]]) -> Iterator[Metric]:
        rss = GaugeMetricFamily(
            "mlworker_worker_rss_bytes",
            "Resident memory of one worker child.",
            labels=["node", "pid", "queues"],
        )
        limits = {
            field: GaugeMetricFamily(
                f"mlworker_memory_{field}",
                f"A worker child's memory guard {which} threshold on its RSS.",
                labels=["node", "pid", "queues"],
            )
            for field, which in (("soft_rss_bytes", "soft (lightweight)"),
                                 ("hard_rss_bytes", "hard (refuse and recycle)"))
        }  # fmt: skip
        limits["vector_cache_bytes"] = GaugeMetricFamily(
            "mlworker_tag_vector_cache_bytes",
            "Bytes in a tags child's candidate-vector cache (see MLWORKER_TAGS_VECTOR_CACHE_MB).",
            labels=["node", "pid", "queues"],
        )
        per_queue: dict[str, int] = dict.fromkeys(self.queues, 0)
        for proc in processes:
            labels = [proc.get("node", ""), proc.get("pid", ""), proc.get("queues", "")]
            rss.add_metric(labels, float(proc.get("rss_bytes", 0)))
            for field, family in limits.items():
                if field in proc:  # a child of an older version does not publish them
                    family.add_metric(labels, float(proc[field]))
            for queue in filter(None, proc.get("queues", "").split(",")):
                per_queue[queue] = per_queue.get(queue, 0) + 1
        yield rss
        yield from limits.values()
        children = GaugeMetricFamily(
            "mlworker_worker_processes",
            "Live worker children consuming a queue (heartbeat within the last minute).",
            labels=["queue"],
        )
        for queue, count in sorted(per_queue.items()):
            children.add_metric([queue], count)
        yield children


def build_registry(store: MetricsStore, queues: Sequence[str]) -> CollectorRegistry:
    """A registry holding only the mlworker collector (the exporter's own process is noise)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MlworkerCollector(store, queues))
    return registry
