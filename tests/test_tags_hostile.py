"""Hostile tag requests: each fails alone with the contract's type and field, in one batch.

The same cases run twice: parsed in-process (the exact error), and sent together with good
requests to a real batched ``tags`` worker, where each bad one fails as itself, the good
batch-mates succeed, and the worker's child serves the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from tasks.tags.options import ExtractTagsRequest
from tests.support import WorkerProcess
from worker.errors import InputTooLarge, InvalidInput

TASK = "tasks.extract_tags"
MAX_TEXT_CHARS = 20_000
RESULT_TIMEOUT_S = 240
GOOD = "Celery workers batch keyphrase extraction over sentence embeddings from Redis queues."

#: (name, kwargs, error type, field)
CASES: list[tuple[str, dict[str, Any], type[InvalidInput], str]] = [
    ("lone high surrogate", {"text": "tags \ud800 here"}, InvalidInput, "text"),
    ("lone low surrogate", {"text": "\udfff" + GOOD}, InvalidInput, "text"),
    ("language with newline", {"text": GOOD, "language": "en\n"}, InvalidInput, "language"),
    ("language too long", {"text": GOOD, "language": "english"}, InvalidInput, "language"),
    ("language is a number", {"text": GOOD, "language": 7}, InvalidInput, "language"),
    ("text is a number", {"text": 12345}, InvalidInput, "text"),
    ("text is a list", {"text": [GOOD]}, InvalidInput, "text"),
    ("text is null", {"text": None}, InvalidInput, "text"),
    ("text missing", {"top_n": 3}, InvalidInput, "text"),
    ("text only spaces", {"text": " \t\n "}, InvalidInput, "text"),
    ("text over the limit", {"text": "word " * MAX_TEXT_CHARS}, InputTooLarge, "text"),
    ("top_n is true", {"text": GOOD, "top_n": True}, InvalidInput, "top_n"),
    ("top_n zero", {"text": GOOD, "top_n": 0}, InvalidInput, "top_n"),
    ("top_n huge", {"text": GOOD, "top_n": 10**9}, InvalidInput, "top_n"),
    ("top_n a string", {"text": GOOD, "top_n": "5"}, InvalidInput, "top_n"),
    ("ngram_range zero", {"text": GOOD, "ngram_range": [0, 2]}, InvalidInput, "ngram_range"),
    ("ngram_range reversed", {"text": GOOD, "ngram_range": [3, 1]}, InvalidInput, "ngram_range"),
    ("ngram_range three", {"text": GOOD, "ngram_range": [1, 2, 3]}, InvalidInput, "ngram_range"),
    ("ngram_range string", {"text": GOOD, "ngram_range": "1,2"}, InvalidInput, "ngram_range"),
    ("ngram_range huge", {"text": GOOD, "ngram_range": [1, 99]}, InvalidInput, "ngram_range"),
    ("diversity NaN", {"text": GOOD, "diversity": float("nan")}, InvalidInput, "diversity"),
    ("diversity inf", {"text": GOOD, "diversity": float("inf")}, InvalidInput, "diversity"),
    ("diversity above 1", {"text": GOOD, "diversity": 1.5}, InvalidInput, "diversity"),
    ("min_score NaN", {"text": GOOD, "min_score": float("nan")}, InvalidInput, "min_score"),
    ("min_score a string", {"text": GOOD, "min_score": "0.5"}, InvalidInput, "min_score"),
    ("stopwords a string", {"text": GOOD, "stopwords": "yes"}, InvalidInput, "stopwords"),
    ("unknown option", {"text": GOOD, "eval": "__import__('os')"}, InvalidInput, "eval"),
]


@pytest.mark.parametrize(("name", "kwargs", "error", "field"), CASES, ids=[c[0] for c in CASES])
def test_parse_refuses_with_type_and_field(
    name: str, kwargs: dict[str, Any], error: type[InvalidInput], field: str
) -> None:
    """Each hostile request is refused at parse time as its exact type, naming its field."""
    with pytest.raises(InvalidInput) as caught:
        ExtractTagsRequest.parse(kwargs, max_text_chars=MAX_TEXT_CHARS)
    assert type(caught.value) is error, name
    assert caught.value.field == field, (name, caught.value)


#: inputs that look hostile but are valid text: they must succeed, not crash the tokenizer
ODD_TEXT = {
    "NUL bytes": "\x00" * 50 + GOOD,
    "zero-width and bidi controls": "\u200b\u200f\u202e" + GOOD + "\ufeff",
    "only punctuation": "!!! ??? ... ;;; ---",
    "only emoji": "\U0001f600 \U0001f680 \U0001f4a5" * 20,
    "one word repeated": "redis " * 3000,
    "one 5000-char token": "x" * 5000,
    "mixed scripts": "Redis キュー 작업 очередь " + GOOD,
}


@pytest.fixture(scope="module")
def tags_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker("tags", MLWORKER_MAX_TEXT_CHARS=str(MAX_TEXT_CHARS))


def test_hostile_requests_fail_alone_next_to_good_batch_mates(
    tags_worker: WorkerProcess, client_app: Celery
) -> None:
    """In one burst: every bad request fails as itself, odd but valid text and good requests
    succeed, and the same child serves a request sent afterwards."""
    pid_before = {c.pid for c in tags_worker.children()}
    bad = [(c, client_app.send_task(TASK, kwargs=c[1])) for c in CASES]
    odd = {name: client_app.send_task(TASK, kwargs={"text": t}) for name, t in ODD_TEXT.items()}
    good = [client_app.send_task(TASK, kwargs={"text": GOOD}) for _ in range(5)]
    for (name, _kwargs, error, field), result in bad:
        with pytest.raises(InvalidInput) as caught:
            result.get(timeout=RESULT_TIMEOUT_S)
        assert type(caught.value) is error, name
        assert caught.value.field == field, (name, caught.value)
    for name, result in odd.items():
        payload = result.get(timeout=RESULT_TIMEOUT_S)
        assert isinstance(payload["tags"], list), name
        assert payload["mode"] == "normal", name
    assert all(len(r.get(timeout=RESULT_TIMEOUT_S)["tags"]) == 5 for r in good)
    after = client_app.send_task(TASK, kwargs={"text": GOOD}).get(timeout=RESULT_TIMEOUT_S)
    assert len(after["tags"]) == 5
    assert {c.pid for c in tags_worker.children()} == pid_before, "no child died"
