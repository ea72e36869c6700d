"""``tasks.transcribe`` on queue ``transcribe``: a thin handler over the runner.

Requests that arrive together (up to ``transcribe_batch_size`` within
``transcribe_flush_interval_s``) run as one group in one child; each still gets its own
stored result or failure, and PROGRESS states carrying ``{"fraction": 0..1}``. A recording
longer than ``transcribe_fanout_after_s`` runs as chunks on any worker of the queue and is
stitched under its own id (``tasks.transcription.chunks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, current_app

from config import Settings
from tasks.transcription import chunks
from tasks.transcription.audio import Audio, DecodedAudio
from tasks.transcription.fanout import part_of, stitch
from tasks.transcription.models import WHISPER
from tasks.transcription.options import TranscriptionJob, parse_chunk, parse_request
from tasks.transcription.runner import Outcome as RunnerOutcome
from tasks.transcription.runner import TranscriptionRunner
from worker.errors import JobError
from worker.handler import Deferred, Outcome, Produced, RunContext, RunMode
from worker.registry import registry


class Transcribe:
    """Handler: parse kwargs into a ``TranscriptionJob``; run the group in the given mode."""

    _runner: TranscriptionRunner | None = None
    _settings: Settings | None = None

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> TranscriptionJob:
        return parse_request(kwargs, settings)

    def run(
        self, items: Sequence[TranscriptionJob], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        if self._runner is None:  # built in the child, with the child's settings
            self._runner = TranscriptionRunner(context.settings)
        self._settings = context.settings
        app = _app()
        out: dict[int, Outcome] = {}
        audio_jobs: list[int] = []
        for index, item in enumerate(items):
            try:
                if item.stitch is not None:
                    out[index] = self._stitched(app, context.job_ids[index], item, mode)
                    continue
                if item.chunk is not None:
                    chunks.check(app, item.chunk)
            except JobError as exc:
                out[index] = exc
                continue
            audio_jobs.append(index)
        ran = self._runner.run(
            [items[i] for i in audio_jobs],
            mode,
            lambda local, fraction: context.progress(audio_jobs[local], fraction),
            fan_out=lambda local, audio: self._fan_out(
                app, items, audio_jobs[local], audio, context
            ),
        )
        for index, outcome in zip(audio_jobs, ran, strict=True):
            out[index] = _outcome(items[index], outcome)
        return [out[i] for i in range(len(items))]

    def _fan_out(
        self,
        app: Celery,
        items: Sequence[TranscriptionJob],
        index: int,
        audio: DecodedAudio,
        context: RunContext,
    ) -> bool:
        """Send a long recording out as chunks (``chunks.start``); False: run it here."""
        item = items[index]
        if not chunks.qualifies(item, audio.duration_s, context.settings):
            return False

        def detect(heard: Audio) -> tuple[str, float]:
            """The recording's language, from its first speech (decided once, for all)."""
            found = registry.get(WHISPER).model.detect_language(heard)
            return found[0], float(found[1])

        context.deferring(index)  # kept before a chunk can end and send the job again
        chunks.start(
            app,
            context.job_ids[index],
            item,
            audio.samples,
            context.settings,
            detect=detect if item.options.language is None else None,
            queue=_at(context.queues, index),
            priority=_at(context.priorities, index),
            trimmed_from_s=audio.trimmed_from_s,
        )
        return True

    def ended(
        self, kwargs: dict[str, Any], result: dict[str, Any] | None, error: BaseException | None
    ) -> None:
        """A chunk's end is counted towards its recording (``chunks.record``); only its
        ``fanout`` field is read (the rest was parsed, or failed, in its own run)."""
        if "fanout" not in kwargs or self._settings is None:
            return
        try:
            ref = parse_chunk(kwargs["fanout"])
        except JobError:
            return  # a malformed chunk message: its own failure is stored, nothing to count
        part = (result or {}).get("fanout_part")
        chunks.record(_app(), ref, part, error, self._settings)

    def _stitched(
        self, app: Celery, job_id: str, item: TranscriptionJob, mode: RunMode
    ) -> Produced:
        assert item.stitch is not None
        parts, facts = chunks.collect(app, job_id, item.stitch)
        result = stitch(
            parts,
            facts["chunks"],
            item.options,
            language=facts["language"],
            language_probability=facts["language_probability"],
            duration_s=facts["duration_s"],
            trimmed_from_s=facts["trimmed_from_s"],
        )
        return Produced(result.as_dict(), WHISPER, mode)


def _outcome(item: TranscriptionJob, outcome: RunnerOutcome) -> Outcome:
    if outcome.deferred:
        return Deferred("sent out as chunks")
    if outcome.out_of_memory is not None:
        return outcome.out_of_memory
    if outcome.error is not None or outcome.result is None:
        return outcome.error or JobError("no transcript produced")
    if item.chunk is not None:  # what the stitch needs of it (``chunks.record``)
        outcome.result.extra["fanout_part"] = part_of(outcome.result)
    ran = RunMode(outcome.mode, outcome.mode_reason)
    return Produced(outcome.result.as_dict(), outcome.model_name, ran)


def _at(values: Sequence[Any], index: int) -> Any:
    return values[index] if index < len(values) else None


def _app() -> Celery:
    """The worker's Celery app (the current app in a worker child)."""
    app: Celery = current_app._get_current_object()
    return app
