"""Many jobs at a time: claim their ids, send them, and read their results, in few round trips.

``MLClient.map`` and ``mlworker submit <family> --jsonl`` are built from these three steps:

- ``claim_many``: the ``--job-id`` idempotency claims (``SET NX`` on ``JOB_KEY + id``),
  pipelined: one round trip per ``CHUNK`` ids, plus one more for the ids already taken;
- ``send_many``: every message through one producer (one connection from the pool), where
  ``MLClient.submit`` acquires one per job;
- ``poll_many``: the result records of every unfinished job with ``MGET``, pipelined: one
  round trip per poll for all of them, finished jobs leaving the poll as they end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, states

from worker.errors import InvalidInput

#: Redis key prefix marking an app-supplied job id as taken (idempotent resubmits)
JOB_KEY = "mlworker:job:"
#: ids per pipelined command: a round trip stays under ~100 KB of claims or keys
CHUNK = 1000
#: first and longest pause between polls: quick for short jobs, at most 1 QPS when idle
POLL_FIRST_S, POLL_MAX_S = 0.05, 1.0
#: priorities kombu's Redis transport accepts (0 most urgent; a message without one counts as 0)
PRIORITIES = range(10)


def check_priority(priority: object) -> int | None:
    """``priority`` if it is None or an int 0..9, else ``InvalidInput("priority")``."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise InvalidInput(
            "priority", f"must be an integer from 0 (most urgent) to 9, got {priority!r}"
        )
    return priority


def claim_of(task: str, kwargs: dict[str, Any]) -> str:
    """What a job id is bound to: the task and a digest of its kwargs."""
    digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode())
    return f"{task} {digest.hexdigest()}"


def check_same_request(job_id: str, stored: bytes | None, task: str, claim: str) -> None:
    """Raise ``InvalidInput("job_id")`` when a taken id holds another task or other kwargs."""
    if stored is None:  # expired between SET NX and GET: the id is free again, a race
        return
    held = stored.decode(errors="replace")
    held_task = held.split(" ", 1)[0]
    if held_task != task:
        raise InvalidInput("job_id", f"{job_id!r} is already the id of a {held_task} job")
    if " " in held and held != claim:
        raise InvalidInput("job_id", f"{job_id!r} was already sent with other kwargs")


def claim_ttl(app: Celery) -> int:
    """Seconds a claim lives: as long as the result it stands for."""
    expires = app.conf.result_expires
    return int(getattr(expires, "total_seconds", lambda: expires)())


@dataclass(frozen=True)
class Submitted:
    """One job of a bulk submit: its id, and whether an earlier submit already sent it."""

    job_id: str
    resubmitted: bool = False


@dataclass(frozen=True)
class Finished:
    """A job's final record: SUCCESS with ``result``, or FAILURE/REVOKED with ``error``."""

    job_id: str
    state: str
    result: dict[str, Any] | None = None
    error: BaseException | None = None


def claim_many(
    app: Celery, task: str, kwargs_list: Sequence[dict[str, Any]], job_ids: Sequence[str]
) -> list[bool | InvalidInput]:
    """Claim every id for its request: True when newly claimed (send it), False when the same
    request claimed it before (sent already), ``InvalidInput("job_id")`` when another did."""
    claims = [claim_of(task, kwargs) for kwargs in kwargs_list]
    keys = [JOB_KEY + job_id for job_id in job_ids]
    ttl = claim_ttl(app)
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        new: list[Any] = []
        for start in range(0, len(keys), CHUNK):
            pipe = client.pipeline(transaction=False)
            for key, claim in zip(
                keys[start : start + CHUNK], claims[start : start + CHUNK], strict=True
            ):
                pipe.set(key, claim, nx=True, ex=ttl)
            new.extend(pipe.execute())
        taken = [i for i, ok in enumerate(new) if not ok]
        stored = _pipelined(client, "get", [keys[i] for i in taken]) if taken else []
    outcome: list[bool | InvalidInput] = [True] * len(keys)
    for i, held in zip(taken, stored, strict=True):
        try:
            check_same_request(job_ids[i], held, task, claims[i])
            outcome[i] = False  # as MLClient.submit: taken by this request, sent before
        except InvalidInput as exc:
            outcome[i] = exc
    return outcome


def _pipelined(client: Any, command: str, keys: Sequence[Any]) -> list[Any]:
    """``command`` (get or mget) on every key, ``CHUNK`` keys a command, one round trip."""
    pipe = client.pipeline(transaction=False)
    if command == "mget":
        for start in range(0, len(keys), CHUNK):
            pipe.mget(keys[start : start + CHUNK])
        return [value for part in pipe.execute() for value in part]
    for key in keys:
        pipe.get(key)
    return list(pipe.execute())


def send_many(
    app: Celery,
    task: str,
    kwargs_list: Sequence[dict[str, Any]],
    job_ids: Sequence[str | None] | None = None,
    priority: int | None = None,
) -> list[str]:
    """Send one message per kwargs through one producer; the job ids, in order.

    ``kwargs_list`` must be validated already (``RequestModel.parse(...).to_kwargs()``).
    """
    ids = list(job_ids) if job_ids is not None else [None] * len(kwargs_list)
    sent: list[str] = []
    with app.producer_or_acquire() as producer:
        for kwargs, job_id in zip(kwargs_list, ids, strict=True):
            result = app.send_task(
                task, kwargs=kwargs, task_id=job_id, priority=priority, producer=producer
            )
            sent.append(result.id)
            # results are read with MGET: drop the AsyncResult so its pub/sub subscription
            # is cancelled now (its __del__ does it), not at exit with Redis maybe gone
            del result
    return sent


def submit_many(
    app: Celery,
    task: str,
    kwargs_list: Sequence[dict[str, Any]],
    job_ids: Sequence[str] | None = None,
    priority: int | None = None,
) -> list[Submitted | InvalidInput]:
    """Claim ``job_ids`` (when given) and send the jobs they are new for, in input order.

    A job whose id the same request claimed before is not sent again (``resubmitted``); an
    id another request holds becomes its ``InvalidInput("job_id")`` and nothing is sent.
    """
    check_priority(priority)
    if job_ids is None:
        return [Submitted(i) for i in send_many(app, task, kwargs_list, None, priority)]
    claims = claim_many(app, task, kwargs_list, job_ids)
    fresh = [i for i, claim in enumerate(claims) if claim is True]
    send_many(app, task, [kwargs_list[i] for i in fresh], [job_ids[i] for i in fresh], priority)
    return [
        claim if isinstance(claim, InvalidInput) else Submitted(job_id, resubmitted=not claim)
        for job_id, claim in zip(job_ids, claims, strict=True)
    ]


def poll_many(
    app: Celery, job_ids: Sequence[str], timeout: float | None = None
) -> Iterator[tuple[int, Finished]]:
    """Yield ``(index, Finished)`` for each job as it ends, reading all unfinished records
    with one pipelined MGET per poll; ``TimeoutError`` after ``timeout`` seconds."""
    backend = app.backend
    keys = [backend.get_key_for_task(job_id) for job_id in job_ids]
    pending = list(range(len(job_ids)))
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = POLL_FIRST_S
    while pending:
        raws = _pipelined(backend.client, "mget", [keys[i] for i in pending])
        waiting = []
        for i, raw in zip(pending, raws, strict=True):
            meta = backend.decode_result(raw) if raw is not None else None
            if meta is not None and meta["status"] in states.READY_STATES:
                yield i, _finished(job_ids[i], meta)
            else:
                waiting.append(i)
        # back off while nothing ends; poll quickly again once results flow
        pause = POLL_FIRST_S if len(waiting) < len(pending) else min(pause * 1.5, POLL_MAX_S)
        pending = waiting
        if not pending:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(job_ids)} jobs unfinished after {timeout}s")
        time.sleep(pause)


def _finished(job_id: str, meta: dict[str, Any]) -> Finished:
    state, value = str(meta["status"]), meta.get("result")
    if state == states.SUCCESS:
        return Finished(job_id, state, result=dict(value or {}))
    error = value if isinstance(value, BaseException) else RuntimeError(str(value))
    return Finished(job_id, state, error=error)
