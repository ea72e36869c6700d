"""``tasks.transcribe`` on queue ``transcribe``: a thin batch task over the runner.

Requests that arrive together (up to ``transcribe_batch_size`` within
``transcribe_flush_interval_s``) run as one group in one child; each still gets its own
stored result or failure, and PROGRESS states carrying ``{"fraction": 0..1}``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import tasks.transcription.models  # noqa: F401  (registers "whisper" for preload)
from config import get_settings
from tasks.transcription.options import TranscribeRequest, parse_request
from tasks.transcription.runner import TranscriptionRunner
from worker.app import app
from worker.batching import IsolatedBatches
from worker.errors import JobError
from worker.jobs import envelope
from worker.memory import process_guard

_settings = get_settings()


class TranscribeTask(IsolatedBatches[TranscribeRequest]):
    """Parse kwargs into a ``TranscribeRequest``; run the group; envelope each result."""

    name = "tasks.transcribe"
    flush_every = _settings.transcribe_batch_size
    flush_interval = _settings.transcribe_flush_interval_s
    flush_idle_s = _settings.batch_idle_flush_s
    _runner: TranscriptionRunner | None = None

    @property
    def runner(self) -> TranscriptionRunner:
        if self._runner is None:  # built in the child, where the memory guard must read
            self._runner = TranscriptionRunner(get_settings(), process_guard())
        return self._runner

    def parse(self, kwargs: dict[str, Any]) -> TranscribeRequest:
        return parse_request(kwargs, get_settings())

    def run_items(self, items: Sequence[TranscribeRequest]) -> list[dict[str, Any] | JobError]:
        started = time.perf_counter()
        requests = list(self.group_requests)
        last: dict[int, float] = {}

        def progress(index: int, fraction: float) -> None:
            # at most one Redis write per 5% of a clip: progress must not slow the job
            if fraction - last.get(index, -1.0) >= 0.05 or fraction >= 1.0:
                last[index] = fraction
                meta = {"fraction": round(fraction, 3)}
                self.backend.store_result(requests[index].id, meta, "PROGRESS")

        outcomes = self.runner.run(items, progress)
        out: list[dict[str, Any] | JobError] = []
        for outcome in outcomes:
            if outcome.error is not None or outcome.result is None:
                out.append(outcome.error or JobError("no transcript produced"))
                continue
            out.append(
                envelope(
                    outcome.result.as_dict(),
                    model_name=outcome.model_name,
                    mode=outcome.mode,
                    mode_reason=outcome.mode_reason,
                    started=started,
                )
            )
        return out


transcribe = app.register_task(TranscribeTask())
