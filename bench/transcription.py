"""Transcription: direct faster-whisper vs one job through the queue, cold start with and
without preload, short clips grouped vs one at a time, and the worker's RSS after jobs.

The direct baseline runs the same computation the worker runs for the same kwargs (the request
parsed by the task's own ``parse_request``, decoded, transcribed with the same batched choice),
in this process, so the ratio is what the queue adds: messaging, result storage, progress.
"""

from __future__ import annotations

import shutil
import statistics
import time
from typing import Any

from bench.harness import MODEL_CACHE, Stack, progress, timed, worker_rss
from bench.plan import Plan
from config import Settings
from tasks.transcription import pipeline
from tasks.transcription.audio import DurationPolicy, load_audio
from tasks.transcription.models import load_whisper, use_batched
from tasks.transcription.options import parse_request
from tests.transcription_support import AUDIO, DURATIONS

TASK = "tasks.transcribe"
LONG = "speech_long.flac"
SHORT = ("speech_short.flac", "speech_request.flac")


def _kwargs(name: str) -> dict[str, Any]:
    return {"audio_path": name, "language": "en"}


class Direct:
    """The worker's computation for one request, in this process, with its own model."""

    def __init__(self, stack: Stack) -> None:
        self.settings = Settings(  # type: ignore[call-arg]
            input_root=stack.input_root, model_cache_dir=MODEL_CACHE, whisper_device="cpu"
        )
        loaded = load_whisper(self.settings)
        self.model = loaded.model
        self.batched = use_batched(self.settings, "cpu")
        self.policy = DurationPolicy.from_settings(self.settings)

    def run(self, name: str) -> None:
        request = parse_request(_kwargs(name), self.settings)
        audio = load_audio(request.source, self.policy)
        pipeline.transcribe(
            audio,
            request.options,
            model=self.model,
            batched=self.batched and audio.duration_s > pipeline.WINDOW_S,
            batch_size=self.settings.whisper_batched_chunks,
        )


def overhead(stack: Stack, direct: Direct, plan: Plan) -> dict[str, Any]:
    """Direct and queued runs of the long clip, interleaved so machine noise hits both."""
    send = stack.celery.send_task
    direct.run(LONG)  # warm-up both sides
    send(TASK, kwargs=_kwargs(LONG)).get(timeout=900)
    direct_s, queue_s, worker_s = [], [], []
    for run in range(plan.long_clip_runs):
        direct_s.append(timed(lambda: direct.run(LONG)))
        started = time.perf_counter()
        result = send(TASK, kwargs=_kwargs(LONG)).get(timeout=900)
        queue_s.append(time.perf_counter() - started)
        worker_s.append(float(result["elapsed_s"]))
        progress(
            f"  long clip run {run + 1}: direct {direct_s[-1]:.2f} s, "
            f"queue {queue_s[-1]:.2f} s (worker-side {worker_s[-1]:.2f} s)"
        )
    d, q = statistics.median(direct_s), statistics.median(queue_s)
    return {
        "clip": LONG,
        "clip_s": DURATIONS.get(LONG.removesuffix(".flac")),
        "direct_s": direct_s,
        "queue_s": queue_s,
        "worker_elapsed_s": worker_s,
        "direct_median_s": d,
        "queue_median_s": q,
        "queue_vs_direct": q / d,
    }


def grouped_vs_serial(stack: Stack, count: int) -> dict[str, float]:
    clips = [SHORT[i % 2] for i in range(count)]
    send = stack.celery.send_task

    def grouped() -> None:
        for job in [send(TASK, kwargs=_kwargs(c)) for c in clips]:
            job.get(timeout=900)

    one_by_one = timed(lambda: [send(TASK, kwargs=_kwargs(c)).get(timeout=900) for c in clips])
    together = timed(grouped)
    progress(f"  {count} short clips: one at a time {one_by_one:.1f} s, grouped {together:.1f} s")
    return {
        "clips": count,
        "one_at_a_time_s": one_by_one,
        "grouped_s": together,
        "grouped_vs_one_at_a_time": together / one_by_one,
    }


def cold_start(stack: Stack, preload: bool) -> dict[str, float]:
    """Process start to first result of a short clip."""
    label = f"transcribe-preload-{'on' if preload else 'off'}"
    with stack.worker(label, "transcribe", MLWORKER_PRELOAD=str(preload).lower()) as worker:
        first = timed(lambda: stack.celery.send_task(TASK, kwargs=_kwargs(SHORT[0])).get(900))
        out = {"ready_s": worker.ready_s, "first_job_s": first, "total_s": worker.ready_s + first}
        progress(
            f"  cold start, preload {preload}: ready {worker.ready_s:.1f} s + first job "
            f"{first:.1f} s"
        )
        return out


def run(stack: Stack, plan: Plan) -> dict[str, Any]:
    for name in (LONG, *SHORT):
        shutil.copyfile(AUDIO / name, stack.input_root / name)
    progress("transcription: cold start without preload")
    cold_off = cold_start(stack, preload=False)
    progress("transcription: direct model in this process")
    direct = Direct(stack)
    progress("transcription: preloaded worker (cold start, overhead, grouping, memory)")
    with stack.worker("transcribe", "transcribe") as worker:
        after_preload = worker_rss(worker)
        send = stack.celery.send_task
        first = timed(lambda: send(TASK, kwargs=_kwargs(SHORT[0])).get(timeout=900))
        cold_on = {
            "ready_s": worker.ready_s,
            "first_job_s": first,
            "total_s": worker.ready_s + first,
        }
        progress(f"  cold start, preload on: ready {worker.ready_s:.1f} s + first {first:.1f} s")
        queue = overhead(stack, direct, plan)
        del direct
        group = grouped_vs_serial(stack, plan.short_clips)
        jobs = 2 + plan.long_clip_runs + 2 * plan.short_clips
        extra = max(0, plan.memory_transcribe_jobs - jobs)
        if extra:
            clips = [send(TASK, kwargs=_kwargs(SHORT[i % 2])) for i in range(extra)]
            for job in clips:
                job.get(timeout=900)
        memory = {
            "jobs": jobs + extra,
            "after_preload": after_preload,
            "after_jobs": worker_rss(worker),
        }
        progress(f"  transcribe worker after {jobs + extra} jobs: {memory['after_jobs']}")
    return {
        "overhead": queue,
        "cold_start": {"preload_on": cold_on, "preload_off": cold_off},
        "short_clips": group,
        "memory": memory,
    }
