"""Long-recording fan-out over the queue: the chunks as jobs, their count, the stitch.

1. ``start`` (the job's own run): the recording is decoded, its language detected once
   (unless the job names one), cut at silences (``fanout.cut_points``; the first chunk is
   sent as soon as the recording's head settles its end), and each chunk sent
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
``mlworker:fanout:<job>`` (hash: token, first_end, chunks, bounds, language, stitching, ...),
``...:parts`` (hash: index -> part or error), ``...:done`` (set of finished indices).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from celery import Celery, states

from config import Settings
from tasks.transcription.audio import SAMPLE_RATE, Audio
from tasks.transcription.fanout import Chunk, cut_after, cut_points, first_cut, first_speech
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
    detect: Callable[[Audio], tuple[str, float]] | None,
    queue: str | None,
    priority: int | None,
    trimmed_from_s: float | None = None,
) -> int:
    """Send the chunks of job ``job_id``; ``detect``: the language of a stretch of speech
    (decided once, for every chunk), None when the job names it. The job's message must be
    kept already (``RunContext.deferring``): a chunk may end before this returns.

    The first chunk goes out as soon as the VAD of the recording's head has settled its end
    (``fanout.first_cut``), so a second child starts on it while this one reads the rest.

    A job delivered again (its child died after it started here) finds its fan-out: what
    the first run decided (token, language, first chunk, bounds) stands, the chunks go out
    again under the same ids, and a chunk that has its result already is skipped by
    admission, one that ran twice is counted once (``record``); so a death anywhere in here
    loses nothing."""
    client = app.backend.client
    key = KEY.format(job_id)
    ttl = max(1, int(settings.result_expires_s))
    client.hsetnx(key, "token", secrets.token_hex(16))
    client.expire(key, ttl)
    state = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    chunk_s = settings.transcribe_fanout_chunk_s
    sent: set[int] = set()

    def send(chunk: Chunk, language: str | None) -> None:
        ref = ChunkRef(job_id, state["token"], chunk.index, chunk.start_s, chunk.end_s)
        named = {"language": language} if language else {}
        app.send_task(
            TASK,
            kwargs={**job.kwargs, **named, "fanout": asdict(ref)},
            task_id=f"{job_id}:chunk:{chunk.index}",
            queue=queue,
            priority=priority,
            headers={PARENT_HEADER: job_id},
            parent_id=job_id,
        )
        sent.add(chunk.index)

    if "bounds" in state:
        chunks = [Chunk(i, a, b) for i, (a, b) in enumerate(json.loads(state["bounds"]))]
        lang = state["language"] or None
        done = int(client.scard(key + ":done"))
        log.info("job %s delivered again: its %d chunks go out again", job_id, len(chunks))
    else:
        if "first_end" in state:  # delivered again after its first chunk went out
            cut: int | None = int(state["first_end"])
            lang, probability = state["language"] or None, float(state["language_probability"])
        else:
            cut, speech = first_cut(samples, chunk_s)
            lang, probability = (
                detect(first_speech(samples, speech)) if detect else (job.options.language, 1.0)
            )
            if cut is not None:
                decided = {"first_end": cut, "language": lang or ""}
                client.hset(key, mapping={**decided, "language_probability": probability})
                send(Chunk(0, 0.0, round(cut / SAMPLE_RATE, 3)), lang)
        if cut is not None:
            chunks = cut_after(samples, chunk_s, cut)
        else:
            chunks = cut_points(samples, chunk_s, speech)
        planned = {
            "chunks": len(chunks),
            "bounds": json.dumps([[c.start_s, c.end_s] for c in chunks]),
            "language": lang or "",
            "language_probability": probability,
            "duration_s": len(samples) / SAMPLE_RATE,
            "trimmed_from_s": "" if trimmed_from_s is None else trimmed_from_s,
        }
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, mapping=planned)
        pipe.scard(key + ":done")  # the first chunk may have ended already
        done = int(pipe.execute()[1])
        if done < len(chunks):
            _counted(app, job_id, state["token"], done, len(chunks))
    # longest first: the chunks spread over the children with the least time left over
    for chunk in sorted(chunks, key=lambda c: c.start_s - c.end_s):
        if chunk.index not in sent:
            send(chunk, lang)
    log.info("job %s: %.0f s sent as %d chunks", job_id, len(samples) / SAMPLE_RATE, len(chunks))
    if done == len(chunks):  # delivered again after its last chunk ended
        _counted(app, job_id, state["token"], done, len(chunks))
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
    """Keep chunk ``ref``'s part (or why it failed) and count it once; the end that finds
    the set complete sends the job again to be stitched (once: a chunk told again, its
    child having died before it did so, does it then). The first chunk may end before the
    rest are planned (no count yet): ``start`` counts it then."""
    client = app.backend.client
    key = KEY.format(ref.parent)
    token = client.hget(key, "token")
    if token is None or token.decode() != ref.token:
        return  # no such fan-out (expired, or not this one's): nothing to count
    body = part if error is None else {"error": type(error).__name__, "message": str(error)}
    ttl = max(1, int(settings.result_expires_s))
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key + ":parts", str(ref.index), json.dumps(body))
    pipe.sadd(key + ":done", ref.index)
    pipe.scard(key + ":done")
    pipe.hget(key, "chunks")
    pipe.expire(key + ":parts", ttl)
    pipe.expire(key + ":done", ttl)
    _, _, done, count, *_ = pipe.execute()
    if count is not None:
        _counted(app, ref.parent, ref.token, int(done), int(count))


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


def _counted(app: Celery, job_id: str, token: str, done: int, count: int) -> None:
    """``done`` of job ``job_id``'s ``count`` chunks have ended: its progress, or (once)
    its stitch."""
    if app.backend.get_task_meta(job_id)["status"] in states.READY_STATES:
        return  # revoked meanwhile: its state stays, nothing is stitched
    if done < count:
        app.backend.store_result(job_id, _progress(done, count), "PROGRESS")
        return
    first = app.backend.client.hsetnx(KEY.format(job_id), "stitching", 1)
    if first and not deferred.resume(app, job_id, {"fanout_stitch": token}):
        log.error("job %s: all %d chunks done but nothing to resume", job_id, count)


def _progress(done: int, count: int) -> dict[str, Any]:
    return {
        "fraction": round(done / count, 3) if count else 0.0,
        "phase": "chunks",
        "chunks": count,
        "chunks_done": done,
    }
