"""Run a group of parsed jobs in the mode the runtime chose: decode each once, then
transcribe. Celery-free.

Normal mode runs short clips as one group and long ones one by one; a ``MemoryError`` in
one unit marks just that unit's jobs ``out_of_memory`` (the runtime runs them again in
lightweight mode). Lightweight mode, in order: the same model on the plain path (no
batching) with greedy decoding; then, if that still runs out of memory, the int8
lightweight model (``whisper_lightweight_model`` when configured, else the same one
re-quantized) after evicting the normal one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from faster_whisper import WhisperModel

from config import Settings
from tasks.transcription import pipeline
from tasks.transcription.audio import DecodedAudio, DurationPolicy, load_audio
from tasks.transcription.models import (
    WHISPER,
    WHISPER_LIGHTWEIGHT,
    use_batched,
    use_grouping,
)
from tasks.transcription.options import TranscribeOptions, TranscriptionJob, TranscriptResult
from worker.errors import JobError
from worker.handler import NORMAL, RunMode
from worker.memory import collect_garbage
from worker.modes import Mode
from worker.registry import registry

log = logging.getLogger(__name__)

#: (request index, fraction of its audio done)
Progress = Callable[[int, float], None]
#: (request index, its decoded audio) -> True when the job was sent out as chunks
FanOut = Callable[[int, DecodedAudio], bool]


def _stretch(request: TranscriptionJob, policy: DurationPolicy) -> DecodedAudio:
    """A chunk's part of its recording (``load_audio`` with a window: decoding stops there)."""
    assert request.chunk is not None
    start_s, end_s = request.chunk.start_s, request.chunk.end_s
    audio = load_audio(request.source, policy, window=(start_s, end_s))
    if len(audio.samples) == 0:
        raise JobError(f"chunk starts at {start_s} s, past the recording's end")
    return audio


@dataclass
class Outcome:
    """One request's transcript (or error) and the mode that produced it."""

    result: TranscriptResult | None = None
    error: JobError | None = None
    #: ran out of memory in normal mode: to be run again in lightweight mode
    out_of_memory: MemoryError | None = None
    mode: Mode = "normal"
    mode_reason: str = ""
    model_name: str = WHISPER
    #: handed to other jobs by ``fan_out`` (a long recording's chunks): no transcript here
    deferred: bool = False


@dataclass(frozen=True)
class _Job:
    index: int
    audio: DecodedAudio
    options: TranscribeOptions


class TranscriptionRunner:
    """Turns parsed jobs into outcomes with one model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = DurationPolicy.from_settings(settings)

    def run(
        self,
        requests: Sequence[TranscriptionJob],
        mode: RunMode = NORMAL,
        progress: Progress | None = None,
        fan_out: FanOut | None = None,
    ) -> list[Outcome]:
        """One outcome per job, in order, in ``mode``; a bad input fails only its own job.

        A chunk job decodes its own stretch of its recording. ``fan_out``
        (normal mode) is asked about each other decoded recording and returns True when it
        sent it out as chunks: that job's outcome is then ``deferred``."""
        report = progress or (lambda _index, _fraction: None)
        outcomes = [Outcome() for _ in requests]
        jobs: list[_Job] = []
        for index, request in enumerate(requests):
            try:
                if request.chunk is not None:
                    audio = _stretch(request, self.policy)
                else:
                    audio = load_audio(request.source, self.policy)
                    if fan_out is not None and not mode.lightweight and fan_out(index, audio):
                        outcomes[index].deferred = True
                        continue
                jobs.append(_Job(index, audio, request.options))
            except JobError as exc:
                outcomes[index].error = exc
        if mode.lightweight:
            self._lightweight(jobs, outcomes, mode.reason, report)
        else:
            self._normal(jobs, outcomes, report)
        return outcomes

    def _normal(self, jobs: list[_Job], outcomes: list[Outcome], report: Progress) -> None:
        """Short clips as one group, long ones one by one; a MemoryError in a unit marks
        just that unit's jobs ``out_of_memory``."""
        loaded = registry.get(WHISPER)
        device = str(loaded.details.get("device", "cpu"))
        batched = use_batched(self.settings, device)
        short = [j for j in jobs if j.audio.duration_s <= pipeline.WINDOW_S]
        grouped = use_grouping(self.settings, device) and len(short) > 1
        units = [short] if grouped else [[j] for j in short]
        units += [[j] for j in jobs if j.audio.duration_s > pipeline.WINDOW_S]
        for unit in units:
            try:
                self._run_normal(loaded.model, unit, outcomes, report, batched)
            except MemoryError as exc:
                log.warning("MemoryError in normal mode (%s) for %d clip(s)", exc, len(unit))
                for job in unit:
                    outcomes[job.index].out_of_memory = exc

    def _run_normal(
        self,
        model: WhisperModel,
        unit: list[_Job],
        outcomes: list[Outcome],
        report: Progress,
        batched: bool,
    ) -> None:
        if len(unit) > 1:
            results = pipeline.transcribe_group(
                [j.audio for j in unit],
                [j.options for j in unit],
                model=model,
                progress=lambda slot, fraction: report(unit[slot].index, fraction),
            )
            for job, result in zip(unit, results, strict=True):
                outcomes[job.index].result = result
            return
        job = unit[0]
        outcomes[job.index].result = pipeline.transcribe(
            job.audio,
            job.options,
            model=model,
            batched=batched and job.audio.duration_s > pipeline.WINDOW_S,
            batch_size=self.settings.whisper_batched_chunks,
            progress=lambda fraction: report(job.index, fraction),
        )

    def _lightweight(
        self, jobs: list[_Job], outcomes: list[Outcome], reason: str, report: Progress
    ) -> None:
        for job in jobs:
            outcome = outcomes[job.index]
            outcome.mode, outcome.mode_reason = "lightweight", reason
            try:
                outcome.result, outcome.model_name = self._light_one(job, report)
            except MemoryError as exc:
                outcome.out_of_memory = exc

    def _light_one(self, job: _Job, report: Progress) -> tuple[TranscriptResult, str]:
        """Plain path, greedy, normal model; then the int8 lightweight model."""
        options = job.options.lighter()

        def on_progress(fraction: float) -> None:
            report(job.index, fraction)

        if not registry.is_loaded(WHISPER_LIGHTWEIGHT):
            try:
                model = registry.get(WHISPER).model
                result = pipeline.transcribe(job.audio, options, model=model, progress=on_progress)
                return result, WHISPER
            except MemoryError as exc:
                log.warning("MemoryError with greedy decoding (%s); loading lighter model", exc)
            registry.evict(WHISPER)
            collect_garbage()
        model = registry.get(WHISPER_LIGHTWEIGHT).model
        result = pipeline.transcribe(job.audio, options, model=model, progress=on_progress)
        return result, WHISPER_LIGHTWEIGHT
