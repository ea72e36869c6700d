"""Completion callbacks: pure rules, and signed POSTs from a real tags worker on real Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery import Celery

from config import Settings
from tasks.tags.options import ExtractTagsRequest
from tests.support import WorkerProcess
from worker import webhooks
from worker.errors import InvalidInput
from worker.test_hooks import KILL_HOOK

TASK = "tasks.extract_tags"
SECRET = "test-webhook-secret"
WAIT_S = 120


class Receiver:
    """A local HTTP server recording each POST; ``/flaky`` answers 500 twice, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.flaky_left = 2
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers), body))
                if self.path.startswith("/flaky") and receiver.flaky_left > 0:
                    receiver.flaky_left -= 1
                    self.send_response(500)
                elif self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{receiver.port}/ok")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str, count: int, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [r for r in self.requests if r[0] == path]
            if len(got) >= count:
                return [json.loads(r[2]) for r in got]
            time.sleep(0.1)
        raise AssertionError(f"{path}: {len(self.requests)} requests, wanted {count}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A tags worker that may call back 127.0.0.1 only, with fast backoff."""
    return start_worker(
        "tags",
        MLWORKER_WEBHOOK_SECRET=SECRET,
        MLWORKER_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        MLWORKER_WEBHOOK_BACKOFF_S="0.3",
        MLWORKER_TAGS_FLUSH_INTERVAL_S="0.2",
        MLWORKER_TEST_HOOKS="1",
        MLWORKER_MAX_DELIVERIES="1",
    )


# --- pure rules ---------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_body() -> None:
    """The header is sha256=<hex HMAC-SHA256> of the exact body bytes."""
    body = b'{"job_id": "x"}'
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert webhooks.sign(b"k", body) == "sha256=" + expected


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://allowed.example.com/hook", True),
        ("https://ALLOWED.example.com./hook", True),
        ("https://allowed.example.com.evil.net/hook", False),
        ("https://evil.net/allowed.example.com", False),
        ("https://user@allowed.example.com/hook", False),
        ("https://allowed.example.com@evil.net/hook", False),
        ("http://[::1]:8080/hook", True),
        ("http://[::1]:9090/hook", False),
        ("https://a.b.wild.example.org/", True),
        ("https://wild.example.org/", False),
        ("https://xwild.example.org/", False),
        ("ftp://allowed.example.com/", False),
        ("http://pinned.example.net:8443/", True),
        ("http://pinned.example.net/", False),
    ],
)
def test_allow_list_matches_hosts_exactly(url: str, allowed: bool) -> None:
    """Hosts match exactly (or as a *. sub-domain), ports when named; userinfo is refused."""
    entries = ("allowed.example.com", "[::1]:8080", "*.wild.example.org", "pinned.example.net:8443")
    assert webhooks.host_allowed(url, entries) is allowed


def test_callback_needs_secret_and_hosts() -> None:
    """Without a secret or an allow-list a callback_url is InvalidInput naming the setting."""
    with pytest.raises(InvalidInput, match="MLWORKER_WEBHOOK_SECRET") as caught:
        webhooks.check_callback("http://a.example/", Settings(webhook_allowed_hosts="a.example"))  # type: ignore[arg-type]
    assert caught.value.field == "callback_url"
    with pytest.raises(InvalidInput, match="MLWORKER_WEBHOOK_ALLOWED_HOSTS"):
        webhooks.check_callback("http://a.example/", Settings(webhook_secret="s"))  # type: ignore[arg-type]


def test_retry_policy() -> None:
    """5xx, 429 and no answer are retried; 3xx and other 4xx are final; backoff doubles."""
    assert webhooks.judge(200).done
    assert webhooks.judge(503).retry and webhooks.judge(429).retry and webhooks.judge(None).retry
    assert not webhooks.judge(302).retry and not webhooks.judge(404).retry
    assert [webhooks.backoff(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_client_model_accepts_callback_url() -> None:
    """Every family's request model takes callback_url (shape checked) and sends it."""
    request = ExtractTagsRequest.parse({"text": "hello", "callback_url": "https://h.example/x"})
    assert request.to_kwargs()["callback_url"] == "https://h.example/x"
    with pytest.raises(InvalidInput) as caught:
        ExtractTagsRequest.parse({"text": "hello", "callback_url": "file:///etc/passwd"})
    assert caught.value.field == "callback_url"


# --- through a real worker ----------------------------------------------------------------


def test_success_callback_is_signed(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """A finished job POSTs its result to callback_url, signed with the worker's secret."""
    job = client_app.send_task(
        TASK, kwargs={"text": "cats and dogs", "callback_url": receiver.url("/ok")}
    )
    job.get(timeout=WAIT_S)
    (body,) = receiver.bodies("/ok", 1)
    _, headers, raw = next(r for r in receiver.requests if r[0] == "/ok")
    expected = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["X-Mlworker-Signature"] == "sha256=" + expected
    assert body["job_id"] == job.id and body["state"] == "SUCCESS" and body["task"] == TASK
    assert "tags" in body["result"]


def test_failure_callback_names_the_error(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """A job failing on a bad kwarg POSTs FAILURE with the error's type and field."""
    job = client_app.send_task(
        TASK, kwargs={"text": "x", "top_n": 0, "callback_url": receiver.url("/fail")}
    )
    with pytest.raises(InvalidInput):
        job.get(timeout=WAIT_S)
    (body,) = receiver.bodies("/fail", 1)
    assert body["state"] == "FAILURE" and body["error"]["type"] == "InvalidInput"
    assert body["error"]["field"] == "top_n"


def test_retried_until_the_receiver_answers(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """500, 500, 200: the body comes three times, and the worker serves jobs meanwhile."""
    job = client_app.send_task(
        TASK, kwargs={"text": "birds", "callback_url": receiver.url("/flaky")}
    )
    job.get(timeout=WAIT_S)
    other = client_app.send_task(TASK, kwargs={"text": "fish"})
    other.get(timeout=WAIT_S)
    bodies = receiver.bodies("/flaky", 3)
    assert len({json.dumps(b, sort_keys=True) for b in bodies}) == 1


def test_unallowed_host_fails_the_job(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """A callback_url outside the allow-list is InvalidInput("callback_url"); nothing is POSTed."""
    url = f"http://localhost:{receiver.port}/never"
    job = client_app.send_task(TASK, kwargs={"text": "x", "callback_url": url})
    with pytest.raises(InvalidInput, match="callback_url"):
        job.get(timeout=WAIT_S)
    time.sleep(1.5)
    assert not [r for r in receiver.requests if r[0] == "/never"]


def test_redirect_is_not_followed(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """A 302 to another host is a final failure: one POST, the redirect target never hit."""
    job = client_app.send_task(
        TASK, kwargs={"text": "x y", "callback_url": receiver.url("/redirect")}
    )
    job.get(timeout=WAIT_S)
    receiver.bodies("/redirect", 1)
    time.sleep(1.5)
    assert len([r for r in receiver.requests if r[0] == "/redirect"]) == 1
    assert len([r for r in receiver.requests if r[0] == "/ok"]) <= 1  # only the success test's


def test_dead_lettered_job_calls_back(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """A job whose child dies past the delivery limit is called back as DeadLettered."""
    kwargs = {"text": "x", KILL_HOOK: True, "callback_url": receiver.url("/dead")}
    job = client_app.send_task(TASK, kwargs=kwargs)
    with pytest.raises(Exception):  # noqa: B017 - DeadLettered or the lost worker
        job.get(timeout=WAIT_S)
    (body,) = receiver.bodies("/dead", 1)
    assert body["state"] == "FAILURE"


def test_revoked_job_calls_back(
    worker: WorkerProcess, client_app: Celery, receiver: Receiver
) -> None:
    """A job revoked while it waits for its eta is called back as REVOKED."""
    job = client_app.send_task(
        TASK, kwargs={"text": "later", "callback_url": receiver.url("/revoked")}, countdown=30
    )
    time.sleep(2)
    client_app.control.revoke(job.id)
    (body,) = receiver.bodies("/revoked", 1, timeout=60)
    assert body["state"] == "REVOKED" and body["job_id"] == job.id
