"""``tasks.transcribe`` on queue ``transcribe``: a thin handler over the runner.

Requests that arrive together (up to ``transcribe_batch_size`` within
``transcribe_flush_interval_s``) run as one group in one child; each still gets its own
stored result or failure, and PROGRESS states carrying ``{"fraction": 0..1}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from config import Settings
from tasks.transcription.options import TranscriptionJob, parse_request
from tasks.transcription.runner import TranscriptionRunner
from worker.errors import JobError
from worker.handler import Outcome, Produced, RunContext, RunMode


class Transcribe:
    """Handler: parse kwargs into a ``TranscriptionJob``; run the group in the given mode."""

    _runner: TranscriptionRunner | None = None

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> TranscriptionJob:
        return parse_request(kwargs, settings)

    def run(
        self, items: Sequence[TranscriptionJob], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        if self._runner is None:  # built in the child, with the child's settings
            self._runner = TranscriptionRunner(context.settings)
        out: list[Outcome] = []
        for outcome in self._runner.run(items, mode, context.progress):
            if outcome.out_of_memory is not None:
                out.append(outcome.out_of_memory)
            elif outcome.error is not None or outcome.result is None:
                out.append(outcome.error or JobError("no transcript produced"))
            else:
                ran = RunMode(outcome.mode, outcome.mode_reason)
                out.append(Produced(outcome.result.as_dict(), outcome.model_name, ran))
        return out
