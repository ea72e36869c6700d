"""Long-recording fan-out over the queue: the chunks as jobs, their count, the stitch.

1. ``start`` (the job's own run): the recording is decoded, its language detected once
   (unless the job names one), cut at silences (``fanout.cut_points``), and each chunk sent
   as an ordinary ``tasks.transcribe`` job (id ``<job>:chunk:<i>``, the job's queue and
   priority, header ``mlworker_parent``) that any worker of the queue runs. The job itself
   is ``Deferred``: acked without a result, PROGRESS ``{"fraction", "phase": "chunks",
   "chunks", "chunks_done"}``.
2. ``record`` (after each chunk's own result or failure is stored): the chunk's part is
   kept and counted once (a redelivered chunk counts once); the job's progress moves; the
   chunk that completes the set sends the job again (``worker.deferred.resume``) with
   ``fanout_stitch``.
3. ``collect`` (that resumed run): the parts in order, or ``ChunkFailed`` naming the first
   chunk that failed for good. The job's chain, links and callback follow its stitched
   result or failure as for any job.

Cancelling the job revokes its id: workers drop its chunks not yet started (the
``mlworker_parent`` header) and its resumed message. Keys, all expiring with results:
``mlworker:fanout:<job>`` (hash: token, chunks, language, ...), ``...:parts`` (hash: index ->
part or error), ``...:done`` (set of finished indices).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict
from typing import Any

from celery import Celery, states

from config import Settings
from tasks.transcription.audio import SAMPLE_RATE
from tasks.transcription.fanout import Chunk, Speech, cut_points
from tasks.transcription.options import ChunkRef, TranscriptionJob
from worker import deferred
from worker.batching.task import PARENT_HEADER
from worker.errors import InvalidInput, JobError

log = logging.getLogger(__name__)

TASK = "tasks.transcribe"
KEY = "mlworker:fanout:{}"


class ChunkFailed(JobError):
    """A chunk of a fanned-out recording failed for good; the recording fails with it."""


def qualifies(job: TranscriptionJob, duration_s: float, settings: Settings) -> bool:
    """Long enough to fan out, from a path every worker can read, and one language."""
    after = settings.transcribe_fanout_after_s
    return (
        after > 0
        and duration_s > after
        and job.chunk is None
        and job.stitch is None
        and job.source.field == "audio_path"
        and not job.options.multilingual
    )


def start(
    app: Celery,
    job_id: str,
    job: TranscriptionJob,
    samples: Any,
    settings: Settings,
    *,
    language: tuple[str, float] | None,
    queue: str | None,
    priority: int | None,
    trimmed_from_s: float | None = None,
    speech: Speech | None = None,
) -> int:
    """Send the chunks of job ``job_id``; ``language``: detected once for all chunks, or
    None when the job names it; ``speech``: ``fanout.speech_of(samples)`` when found already.

    A job delivered again (its child died after it started here) finds its fan-out: the
    same chunks go out again under the same ids and token, and a chunk that has its result
    already is skipped by admission, one that ran twice is counted once (``record``); so a
    death anywhere in here loses nothing."""
    client = app.backend.client
    key = KEY.format(job_id)
    first = bool(client.hsetnx(key, "token", secrets.token_hex(16)))
    token = client.hget(key, "token").decode()
    known = None if first else client.hget(key, "bounds")
    ttl = max(1, int(settings.result_expires_s))
    if known is not None:
        chunks = [Chunk(i, a, b) for i, (a, b) in enumerate(json.loads(known))]
        lang = client.hget(key, "language").decode() or None
        log.info("job %s delivered again: its %d chunks go out again", job_id, len(chunks))
    else:
        chunks = cut_points(samples, settings.transcribe_fanout_chunk_s, speech)
        lang, probability = language or (job.options.language, 1.0)
        state = {
            "chunks": len(chunks),
            "bounds": json.dumps([[c.start_s, c.end_s] for c in chunks]),
            "language": lang or "",
            "language_probability": probability,
            "duration_s": len(samples) / SAMPLE_RATE,
            "trimmed_from_s": "" if trimmed_from_s is None else trimmed_from_s,
        }
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, mapping=state)
        pipe.expire(key, ttl)
        pipe.execute()
        app.backend.store_result(job_id, _progress(0, len(chunks)), "PROGRESS")
    base = {**job.kwargs, "language": lang} if lang else dict(job.kwargs)
    # longest first: the chunks spread over the children with the least time left over
    for chunk in sorted(chunks, key=lambda c: c.start_s - c.end_s):
        ref = ChunkRef(job_id, token, chunk.index, chunk.start_s, chunk.end_s)
        app.send_task(
            TASK,
            kwargs={**base, "fanout": asdict(ref)},
            task_id=f"{job_id}:chunk:{chunk.index}",
            queue=queue,
            priority=priority,
            headers={PARENT_HEADER: job_id},
            parent_id=job_id,
        )
    log.info("job %s: %.0f s sent as %d chunks", job_id, len(samples) / SAMPLE_RATE, len(chunks))
    return len(chunks)


def check(app: Celery, ref: ChunkRef) -> None:
    """A chunk names a fan-out that is running, with its token; else ``InvalidInput``."""
    token = app.backend.client.hget(KEY.format(ref.parent), "token")
    if token is None or token.decode() != ref.token:
        raise InvalidInput("fanout", f"names no running fan-out of job {ref.parent!r}")


def record(
    app: Celery,
    ref: ChunkRef,
    part: dict[str, Any] | None,
    error: BaseException | None,
    settings: Settings,
) -> None:
    """Keep chunk ``ref``'s part (or why it failed) and count it once; the chunk that
    completes the set sends the job again to be stitched."""
    client = app.backend.client
    key = KEY.format(ref.parent)
    found = client.hmget(key, ["token", "chunks"])
    if found[0] is None or found[0].decode() != ref.token:
        return  # no such fan-out (expired, or not this one's): nothing to count
    count = int(found[1])
    body = part if error is None else {"error": type(error).__name__, "message": str(error)}
    ttl = max(1, int(settings.result_expires_s))
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key + ":parts", str(ref.index), json.dumps(body))
    pipe.sadd(key + ":done", ref.index)
    pipe.scard(key + ":done")
    pipe.expire(key + ":parts", ttl)
    pipe.expire(key + ":done", ttl)
    _, new, done, *_ = pipe.execute()
    if not new:
        return  # a chunk delivered again after it was counted
    if app.backend.get_task_meta(ref.parent)["status"] in states.READY_STATES:
        return  # revoked meanwhile: its state stays, nothing is stitched
    if done < count:
        app.backend.store_result(ref.parent, _progress(int(done), count), "PROGRESS")
        return
    if not deferred.resume(app, ref.parent, {"fanout_stitch": ref.token}):
        log.error("job %s: all %d chunks done but nothing to resume", ref.parent, count)


def collect(app: Celery, job_id: str, token: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The parts of job ``job_id``'s chunks in order and the fan-out's facts; raises
    ``ChunkFailed`` for the first chunk that failed, ``InvalidInput`` for a wrong token."""
    client = app.backend.client
    key = KEY.format(job_id)
    state = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    if state.get("token") != token:
        raise InvalidInput("fanout_stitch", f"names no running fan-out of job {job_id!r}")
    bounds = json.loads(state["bounds"])
    chunks = [Chunk(i, float(a), float(b)) for i, (a, b) in enumerate(bounds)]
    raw = client.hgetall(key + ":parts")
    parts = {int(k): json.loads(v) for k, v in raw.items()}
    if len(parts) != len(chunks):
        raise ChunkFailed(f"{len(parts)} of {len(chunks)} chunks finished")
    for chunk in chunks:
        part = parts[chunk.index]
        if "error" in part:
            raise ChunkFailed(
                f"chunk {chunk.index + 1} of {len(chunks)} ({chunk.start_s:.1f}-"
                f"{chunk.end_s:.1f} s) failed: {part['error']}: {part['message']}"
            )
    facts = {
        "chunks": chunks,
        "language": state["language"] or None,
        "language_probability": float(state["language_probability"]),
        "duration_s": float(state["duration_s"]),
        "trimmed_from_s": float(state["trimmed_from_s"]) if state["trimmed_from_s"] else None,
    }
    return [parts[c.index] for c in chunks], facts


def _progress(done: int, count: int) -> dict[str, Any]:
    return {
        "fraction": round(done / count, 3) if count else 0.0,
        "phase": "chunks",
        "chunks": count,
        "chunks_done": done,
    }
