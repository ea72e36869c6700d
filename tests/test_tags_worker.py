"""tasks.extract_tags through a real ``mlworker worker --queues tags`` on a real Redis."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from config import Settings
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import JAPANESE, documents
from tests.support import WorkerProcess
from worker.errors import InputTooLarge, InvalidInput
from worker.redis_server import EmbeddedRedis
from worker.test_hooks import MEMORY_ERROR_HOOK

TASK = "tasks.extract_tags"
#: long enough that 64 quickly sent requests flush by count, not by the timer
BATCH_FLUSH_S = "30"  # long: only a full batch (64) flushes, so a send cannot straddle a tick
COUNT_ONLY = {"MLWORKER_TAGS_FLUSH_INTERVAL_S": BATCH_FLUSH_S, "MLWORKER_BATCH_IDLE_FLUSH_S": "0"}
RESULT_TIMEOUT_S = 240
#: the project's seed documents (tests/fixtures/text/README.md)
SEEDS = Path(__file__).parent / "fixtures" / "text" / "seeds"


@pytest.fixture(scope="module")
def expected(stack_dirs: dict[str, Path]) -> Callable[[list[str]], list[list[dict[str, Any]]]]:
    """In-process tags (no queue) on the workers' default backend, to compare results with."""
    settings = Settings(
        embedder_device="cpu", threads_per_child=1, model_cache_dir=stack_dirs["cache"]
    )
    encoder = load_embedder(settings).model

    def tags_of(docs: list[str]) -> list[list[dict[str, Any]]]:
        return [r.as_dict()["tags"] for r in extract_tags(docs, TagOptions(), encoder=encoder)]

    return tags_of


@pytest.fixture(scope="module")
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to look at the queue itself."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _send(app: Celery, kwargs_list: list[dict[str, Any]]) -> list[AsyncResult]:
    return [app.send_task(TASK, kwargs=kwargs) for kwargs in kwargs_list]


@pytest.fixture(scope="class")
def worker(start_worker: Callable[..., WorkerProcess]) -> Iterator[WorkerProcess]:
    """One tags worker per test class, stopped before the SIGTERM test starts its own."""
    proc = start_worker("tags", **COUNT_ONLY)
    yield proc
    proc.stop()


class TestBatchedWorker:
    """Tests sharing one tags worker that flushes by count (batch size 64)."""

    @pytest.mark.slow
    def test_200_documents_each_get_their_own_result(
        self, worker: WorkerProcess, client_app: Celery, expected: Callable[..., Any]
    ) -> None:
        """200 documents sent at once come back each with its own tags and the envelope."""
        docs = documents(200)
        results = _send(client_app, [{"text": d} for d in docs])
        payloads = [r.get(timeout=RESULT_TIMEOUT_S) for r in results]
        assert [p["tags"] for p in payloads] == expected(docs)
        for payload in payloads:
            assert payload["backend"] == "onnx-int8" and payload["mode"] in (
                "normal",
                "lightweight",
            )
            assert payload["model"]["model_id"] == "bundled:all-MiniLM-L6-v2"
            assert payload["language"] == "en" and len(payload["tags"]) == 5
        assert max(p["batch"]["size"] for p in payloads) == 64

    @pytest.mark.parametrize(
        ("bad", "error"),
        [
            ({"text": ""}, InvalidInput),
            ({"text": ["not", "a", "string"]}, InvalidInput),
            ({"text": "x" * (10 * 1024 * 1024)}, InputTooLarge),
        ],
        ids=["empty", "wrong-type", "10MB"],
    )
    def test_malformed_request_fails_alone_in_batch_of_64(
        self,
        worker: WorkerProcess,
        client_app: Celery,
        bad: dict[str, Any],
        error: type[InvalidInput],
    ) -> None:
        """One malformed request among 64 fails with an error naming 'text'; 63 succeed."""
        docs = documents(63, JAPANESE[:9]) if error is InputTooLarge else documents(63)
        kwargs = [{"text": d} for d in docs]
        # last: encoding and moving a 10 MB message takes long enough for the flush timer to
        # fire mid-send, which would split the good requests over two batches
        kwargs.append(bad)
        results = _send(client_app, kwargs)
        bad_result = results.pop()
        with pytest.raises(error) as caught:
            bad_result.get(timeout=RESULT_TIMEOUT_S, propagate=True)
        assert type(caught.value) is error
        assert caught.value.field == "text"
        payloads = [r.get(timeout=RESULT_TIMEOUT_S) for r in results]
        assert all(len(p["tags"]) == 5 for p in payloads)
        assert {p["batch"]["size"] for p in payloads} == {63}, "all 63 ran as one batch"

    def test_korean_and_japanese_seeds_in_one_batch_name_their_language(
        self, worker: WorkerProcess, client_app: Celery, expected: Callable[..., Any]
    ) -> None:
        """The five real seed documents (one Korean, four Japanese) among 59 English ones:
        one batch, each result naming its language, tags as in-process."""
        seeds = [p.read_text(encoding="utf-8") for p in sorted(SEEDS.glob("*.txt"))]
        docs = [*seeds, *documents(59)]
        payloads = [
            r.get(timeout=RESULT_TIMEOUT_S) for r in _send(client_app, [{"text": d} for d in docs])
        ]
        assert [p["language"] for p in payloads[:5]] == ["ja", "ja", "ja", "ko", "ja"]
        assert [p["tags"] for p in payloads] == expected(docs)
        assert {p["batch"]["size"] for p in payloads} == {64}

    def test_options_travel_per_request(self, worker: WorkerProcess, client_app: Celery) -> None:
        """Batch-mates with different options each get tags cut by their own options."""
        doc = documents(1)[0]
        plain, wide = _send(
            client_app,
            [{"text": doc, "top_n": 2}, {"text": doc, "top_n": 6, "ngram_range": [2, 3]}],
        )
        assert len(plain.get(timeout=RESULT_TIMEOUT_S)["tags"]) == 2
        wide_tags = wide.get(timeout=RESULT_TIMEOUT_S)["tags"]
        assert len(wide_tags) == 6 and all(" " in t["tag"] for t in wide_tags)


def test_idle_flush_starts_a_lone_job_at_once_and_groups_a_burst(
    start_worker: Callable[..., WorkerProcess], client_app: Celery
) -> None:
    """With the idle rule a lone request runs without waiting out the (30 s) interval,
    while requests sent back to back still share a batch."""
    proc = start_worker("tags", MLWORKER_TAGS_FLUSH_INTERVAL_S=BATCH_FLUSH_S)
    try:
        started = time.monotonic()
        [lone] = _send(client_app, [{"text": documents(1)[0]}])
        payload = lone.get(timeout=RESULT_TIMEOUT_S)
        waited = time.monotonic() - started
        assert payload["batch"]["size"] == 1 and waited < float(BATCH_FLUSH_S) / 2, waited
        burst = _send(client_app, [{"text": d} for d in documents(40)])
        sizes = [r.get(timeout=RESULT_TIMEOUT_S)["batch"]["size"] for r in burst]
        assert max(sizes) >= 10, f"a burst of 40 was not grouped: {sorted(set(sizes))}"
    finally:
        proc.stop()


def _queued_ids(client: redis.Redis, queue: str = "tags") -> set[str]:
    """Task ids of the messages waiting in ``queue`` (kombu's Redis list)."""
    raw: list[bytes] = client.lrange(queue, 0, -1)  # type: ignore[assignment]
    return {json.loads(message)["headers"]["id"] for message in raw}


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_with_partly_filled_buffer_loses_nothing(
    start_worker: Callable[..., WorkerProcess],
    client_app: Celery,
    redis_client: redis.Redis,
) -> None:
    """SIGTERM with a flushed batch and a partial buffer: each request is done or requeued."""
    # flush by count only: 64 run as a batch, the other 10 wait in the buffer
    first = start_worker(
        "tags", MLWORKER_TAGS_FLUSH_INTERVAL_S="600", MLWORKER_BATCH_IDLE_FLUSH_S="0"
    )
    docs = documents(74)
    results = _send(client_app, [{"text": d} for d in docs])
    _wait_until(lambda: not _queued_ids(redis_client), 30, "worker never reserved the messages")
    assert first.stop(signal.SIGTERM) == 0, first.log()[-3000:]

    done = {r.id for r in results if r.state == "SUCCESS"}
    requeued = _queued_ids(redis_client)
    assert done | requeued == {r.id for r in results}, "some request was lost"
    assert requeued, "the partial buffer should have gone back to the queue"

    start_worker("tags")
    payloads = [r.get(timeout=RESULT_TIMEOUT_S) for r in results]
    assert all(len(p["tags"]) == 5 for p in payloads)


def test_memory_error_in_normal_mode_retries_lightweight(
    client_app: Celery, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A real MemoryError in a batch's normal run reruns it light: unigram tags, and why."""
    start_worker("tags_hooks", MLWORKER_TEST_HOOKS="1")  # its own queue: no other worker
    text = "Celery workers batch tag extraction requests for the sentence embedding model."
    [hooked, mate] = [
        client_app.send_task(TASK, kwargs=kwargs, queue="tags_hooks")
        for kwargs in ({"text": text, MEMORY_ERROR_HOOK: "normal"}, {"text": text, "top_n": 3})
    ]
    result = hooked.get(timeout=RESULT_TIMEOUT_S)
    assert result["mode"] == "lightweight" and "MemoryError" in result["mode_reason"]
    assert result["tags"] and all(" " not in t["tag"] for t in result["tags"])
    assert len(mate.get(timeout=RESULT_TIMEOUT_S)["tags"]) == 3
