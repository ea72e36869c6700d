"""Completion callbacks: a job's end POSTed, signed, to its ``callback_url``.

The child never POSTs: it records a due delivery in Redis in one pipelined round trip
(``record``). A daemon thread in each worker's main process (``DeliveryLoop``) claims due
deliveries with a lease (one Lua call, so two workers never hold the same one and a dead
deliverer's delivery is due again when its lease ends), POSTs, then deletes it, reschedules
it with exponential backoff, or gives it up (kept in a capped list operators can read).

Keys: ``mlworker:webhooks:due`` (sorted set, id -> due time), ``mlworker:webhooks:body``
(hash, id -> JSON ``{"url", "body", "attempts"}``), ``mlworker:webhooks:failed`` (capped list).
Delivery is at least once: the receiver dedupes by ``job_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import urllib3

from config import Settings
from worker.errors import InvalidInput

log = logging.getLogger(__name__)

DUE_KEY = "mlworker:webhooks:due"
BODY_KEY = "mlworker:webhooks:body"
FAILED_KEY = "mlworker:webhooks:failed"
SIGNATURE_HEADER = "X-Mlworker-Signature"
#: the given-up deliveries operators can see; older ones drop off
FAILED_KEEP = 1000
#: a claimed delivery is someone else's to retry after this long (well above one POST)
LEASE_S = 60.0
#: deliveries claimed per loop turn: bounds one turn's time to a few POST timeouts
CLAIM_BATCH = 16
#: idle poll period of the loop: the delay a callback may wait before its first POST
POLL_S = 0.5

#: returns the ids due at ARGV[1] (at most ARGV[3]) with their bodies, each leased until ARGV[2]
_CLAIM_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    table.insert(out, id)
    table.insert(out, body)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


# --- pure rules ---------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def url_shape_problem(url: str) -> str | None:
    """Why ``url`` cannot be a callback URL at all (scheme, host, credentials), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user@host)"
    if port == 0:
        return "must not name port 0"
    return None


def _entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (lower-case host, port or None for any port)."""
    parts = urlsplit("//" + entry.strip())
    return (parts.hostname or "").rstrip("."), parts.port


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``url``'s host (and port) matches an entry of ``allowed``.

    An entry is ``host`` (any port) or ``host:port``; IPv6 as ``[::1]`` / ``[::1]:8080``;
    ``*.example.com`` matches any sub-domain of example.com (not example.com itself).
    Hosts compare exactly, case-insensitively: ``allowed.example.com.evil.net`` is not
    ``allowed.example.com``.
    """
    if url_shape_problem(url) is not None:
        return False
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = _effective_port(parts)
    for entry in allowed:
        name, entry_port = _entry(entry)
        if not name or (entry_port is not None and entry_port != port):
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and len(host) > len(name) - 1:
                return True
        elif host == name:
            return True
    return False


def _effective_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def check_callback(url: Any, settings: Settings) -> str:
    """``url`` if a job may call it back on this worker, else ``InvalidInput("callback_url")``."""
    if not isinstance(url, str):
        kind = "null" if url is None else type(url).__name__
        raise InvalidInput("callback_url", f"must be a string, got {kind}")
    if settings.webhook_secret is None:
        raise InvalidInput("callback_url", "this worker has no MLWORKER_WEBHOOK_SECRET to sign")
    if not settings.webhook_allowed_hosts:
        raise InvalidInput("callback_url", "MLWORKER_WEBHOOK_ALLOWED_HOSTS is empty")
    problem = url_shape_problem(url)
    if problem:
        raise InvalidInput("callback_url", problem)
    if not host_allowed(url, settings.webhook_allowed_hosts):
        raise InvalidInput("callback_url", "host is not in MLWORKER_WEBHOOK_ALLOWED_HOSTS")
    return url


def pop_callback(kwargs: dict[str, Any], settings: Settings) -> str | None:
    """Take ``callback_url`` out of a job's kwargs (the handler never sees it), checked."""
    if "callback_url" not in kwargs:
        return None
    return check_callback(kwargs.pop("callback_url"), settings)


def error_of(exc: BaseException) -> dict[str, Any]:
    """A failure as the callback's ``error``: type, message and the field of a bad input."""
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvalidInput):
        error["field"] = exc.field
    return error


def payload(job_id: str, task: str, state: str, outcome: Mapping[str, Any]) -> bytes:
    """The exact body bytes that are signed and sent; ``outcome`` is result or error."""
    return json.dumps({"job_id": job_id, "task": task, "state": state, **outcome}).encode()


@dataclass(frozen=True)
class Verdict:
    """What one POST's answer means: done, try again later, or give up."""

    done: bool
    retry: bool
    reason: str


def judge(status: int | None, error: str | None = None) -> Verdict:
    """2xx done; connection error, timeout, 5xx and 429 retried; 3xx (redirects are never
    followed) and other 4xx final."""
    if status is None:
        return Verdict(False, True, error or "no answer")
    if 200 <= status < 300:
        return Verdict(True, False, str(status))
    if status >= 500 or status == 429:
        return Verdict(False, True, f"HTTP {status}")
    return Verdict(False, False, f"HTTP {status}")


def backoff(attempts: int, base_s: float) -> float:
    """Delay after the ``attempts``-th failed POST: base, 2 base, 4 base ..."""
    return base_s * float(2 ** max(0, attempts - 1))


# --- Redis and HTTP shells ----------------------------------------------------------------


def record(client: Any, job_id: str, url: str, body: bytes, now: float | None = None) -> None:
    """Queue one delivery, due now: one pipelined round trip (HSET + ZADD)."""
    entry = json.dumps({"url": url, "body": body.decode(), "attempts": 0})
    pipe = client.pipeline(transaction=True)
    pipe.hset(BODY_KEY, job_id, entry)
    pipe.zadd(DUE_KEY, {job_id: time.time() if now is None else now})
    pipe.execute()


def record_outcome(
    client: Any, settings: Settings, url: str, job_id: str, task: str, state: str, outcome: Any
) -> None:
    """Queue the callback of a job's end (``outcome``: result dict or exception)."""
    if isinstance(outcome, BaseException):
        body = payload(job_id, task, state, {"error": error_of(outcome)})
    else:
        body = payload(job_id, task, state, {"result": outcome})
    try:
        record(client, job_id, url, body)
    except Exception:  # noqa: BLE001 - a lost callback must never fail the job it reports
        log.exception("could not record the callback of job %s", job_id)


def claim(client: Any, now: float, lease_s: float = LEASE_S) -> list[tuple[str, dict[str, Any]]]:
    """Lease up to ``CLAIM_BATCH`` due deliveries (one Lua call)."""
    flat = client.eval(_CLAIM_LUA, 2, DUE_KEY, BODY_KEY, now, now + lease_s, CLAIM_BATCH)
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return [(_text(job_id), json.loads(entry)) for job_id, entry in pairs]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def post(
    http: urllib3.PoolManager, url: str, body: bytes, secret: bytes, timeout: float
) -> Verdict:
    """One signed POST, redirects not followed, no library retries."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    try:
        response = http.request(
            "POST", url, body=body, headers=headers, timeout=timeout, retries=False, redirect=False
        )
    except urllib3.exceptions.HTTPError as exc:
        return judge(None, type(exc).__name__)
    return judge(response.status)


def deliver_due(client: Any, http: urllib3.PoolManager, settings: Settings) -> int:
    """Claim, POST and settle what is due now; returns how many were claimed."""
    if settings.webhook_secret is None:
        return 0
    secret = settings.webhook_secret.get_secret_value().encode()
    claimed = claim(client, time.time())
    for job_id, entry in claimed:
        url, body = entry["url"], entry["body"].encode()
        if host_allowed(url, settings.webhook_allowed_hosts):
            verdict = post(http, url, body, secret, settings.webhook_timeout_s)
        else:
            verdict = Verdict(False, False, "host no longer in MLWORKER_WEBHOOK_ALLOWED_HOSTS")
        _settle(client, settings, job_id, entry, verdict)
    return len(claimed)


def _settle(
    client: Any, settings: Settings, job_id: str, entry: dict[str, Any], verdict: Verdict
) -> None:
    attempts = int(entry["attempts"]) + 1
    pipe = client.pipeline(transaction=True)
    if verdict.retry and attempts < settings.webhook_max_attempts:
        delay = backoff(attempts, settings.webhook_backoff_s)
        log.info(
            "callback of job %s: %s; attempt %d in %.1fs",
            job_id,
            verdict.reason,
            attempts + 1,
            delay,
        )
        pipe.hset(BODY_KEY, job_id, json.dumps({**entry, "attempts": attempts}))
        pipe.zadd(DUE_KEY, {job_id: time.time() + delay})
    else:
        if not verdict.done:
            log.warning(
                "callback of job %s given up after %d attempts: %s",
                job_id,
                attempts,
                verdict.reason,
            )
            failed = {"job_id": job_id, "url": entry["url"], "attempts": attempts}
            pipe.lpush(FAILED_KEY, json.dumps({**failed, "reason": verdict.reason}))
            pipe.ltrim(FAILED_KEY, 0, FAILED_KEEP - 1)
        pipe.zrem(DUE_KEY, job_id)
        pipe.hdel(BODY_KEY, job_id)
    pipe.execute()


class DeliveryLoop:
    """The daemon thread of one worker's main process that delivers due callbacks."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlworker-webhooks", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        http = urllib3.PoolManager()
        while not self.stopped.is_set():
            try:
                claimed = deliver_due(self.client, http, self.settings)
            except Exception:  # noqa: BLE001 - Redis away: try again next turn
                log.exception("callback delivery turn failed")
                claimed = 0
            if claimed < CLAIM_BATCH:
                self.stopped.wait(POLL_S)


class RecordingSink:
    """A ``Sink`` that queues the callback of each job ending in success or failure."""

    def __init__(self, sink: Any, client: Any, settings: Settings) -> None:
        self.sink = sink
        self.client = client
        self.settings = settings

    def _url(self, ticket: Any) -> str | None:
        url = ticket.kwargs.get("callback_url")
        if url is None:
            return None
        try:
            return check_callback(url, self.settings)
        except InvalidInput:
            return None  # the job itself fails for it; nowhere safe to report to

    def successes(self, ended: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        for ticket, result in ended:
            url = self._url(ticket)
            if url:
                record_outcome(
                    self.client, self.settings, url, ticket.id, ticket.task, "SUCCESS", result
                )
        self.sink.successes(ended)

    def failure(self, ticket: Any, exc: BaseException) -> None:
        url = self._url(ticket)
        if url:
            record_outcome(self.client, self.settings, url, ticket.id, ticket.task, "FAILURE", exc)
        self.sink.failure(ticket, exc)

    def requeued(self, ticket: Any) -> None:
        self.sink.requeued(ticket)

    def skipped(self, ticket: Any) -> None:
        self.sink.skipped(ticket)
