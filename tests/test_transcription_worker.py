"""Transcription through a real ``mlworker worker --queues transcribe`` on a real Redis."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery import Celery
from celery.result import AsyncResult

from tasks.transcription.audio import SAMPLE_RATE
from tests.fixtures.make_audio import write_audio
from tests.support import WorkerProcess
from tests.transcription_support import (
    AUDIO,
    DURATIONS,
    MAX_WER,
    TEXTS,
    parse_cues,
    word_error_rate,
)
from worker.test_hooks import MEMORY_ERROR_HOOK

MAX_S = 60  #: the worker's whisper_max_duration_s here: the 35 s clip fits, a 61 s one does not
JOB_TIMEOUT = 240.0  #: two shared cores run whisper-base several times slower than real time


@pytest.fixture(scope="module")
def inputs(input_root: Path) -> Path:
    """The fixtures copied under the input root, plus a clip one second over the maximum."""
    for path in AUDIO.iterdir():
        shutil.copyfile(path, input_root / path.name)
    write_audio(input_root / "too_long.flac", np.zeros((MAX_S + 1) * SAMPLE_RATE, np.float32))
    return input_root


@pytest.fixture(scope="module")
def worker(inputs: Path, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One transcribe worker (reject mode, 60 s maximum) shared by this module's tests."""
    return start_worker(
        "transcribe", MLWORKER_WHISPER_MAX_DURATION_S=str(MAX_S), MLWORKER_WHISPER_OVER_MAX="reject"
    )


def _send(app: Celery, **kwargs: Any) -> AsyncResult:
    return app.send_task("tasks.transcribe", kwargs=kwargs)


def _ok(result: AsyncResult) -> dict[str, Any]:
    value = result.get(timeout=JOB_TIMEOUT, propagate=True)
    assert isinstance(value, dict)
    return value


def test_first_job_pays_no_model_load(client_app: Celery, worker: WorkerProcess) -> None:
    """The model loaded at child start, so the first job reuses it (one load in the process)."""
    result = _ok(_send(client_app, audio_path="speech_request.flac", language="en"))
    assert result["model"]["loads_in_process"] == 1
    assert worker.log().index("model loaded name=whisper") < worker.log().index("child ready")
    assert word_error_rate(TEXTS["speech_request"], result["text"]) <= MAX_WER


def test_sentence_through_worker(client_app: Celery, worker: WorkerProcess) -> None:
    """A fixture sentence comes back within the WER bar with language, duration, times, SRT/VTT."""
    formats = ["text", "segments", "srt", "vtt"]
    result = _ok(_send(client_app, audio_path="speech_short.flac", output_formats=formats))
    assert word_error_rate(TEXTS["speech_short"], result["text"]) <= MAX_WER, result["text"]
    assert result["language"] == "en" and result["language_probability"] > 0.5
    assert result["duration_s"] == pytest.approx(DURATIONS["speech_short"], abs=0.05)
    assert result["segments"]
    for segment in result["segments"]:
        assert 0 <= segment["start"] <= segment["end"] <= result["duration_s"] + 0.05
    for kind in ("srt", "vtt"):
        cues = parse_cues(result[kind], kind)
        assert [c[2] for c in cues] == [s["text"] for s in result["segments"]]
    assert result["mode"] == "normal" and result["backend"] == "ctranslate2-cpu-int8"
    assert "trimmed_from_s" not in result


def test_progress_is_reported(client_app: Celery, worker: WorkerProcess) -> None:
    """A long job shows PROGRESS states with a fraction in 0..1 before it succeeds."""
    job = _send(client_app, audio_path="speech_long.flac", language="en")
    fractions: list[float] = []
    deadline = time.monotonic() + JOB_TIMEOUT
    while job.state not in ("SUCCESS", "FAILURE") and time.monotonic() < deadline:
        if job.state == "PROGRESS":
            fractions.append(float(job.info["fraction"]))
        time.sleep(0.05)
    result = _ok(job)
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions), fractions
    assert word_error_rate(TEXTS["speech_long"], result["text"]) <= MAX_WER, result["text"]
    assert result["segments"][-1]["end"] <= result["duration_s"] + 0.05


def test_silence_returns_no_words(client_app: Celery, worker: WorkerProcess) -> None:
    """Silent audio succeeds with an empty transcript."""
    result = _ok(_send(client_app, audio_path="silence.flac"))
    assert result["text"] == "" and result["segments"] == []


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "words"),
    [
        ({"audio_path": "corrupt.flac"}, "UnreadableInput", "not a decodable audio"),
        ({"audio_path": "empty.flac"}, "UnreadableInput", "empty (0 bytes)"),
        ({"audio_path": "too_long.flac"}, "InputTooLarge", "longer than the 60s maximum"),
        ({"audio_path": "/etc/hostname"}, "PathOutsideRoot", "outside the input root"),
        ({"audio_path": "speech_short.flac", "task": "dance"}, "InvalidInput", "task:"),
    ],
)
def test_bad_input_fails_and_worker_serves_next(
    client_app: Celery,
    worker: WorkerProcess,
    kwargs: dict[str, Any],
    exc_type: str,
    words: str,
) -> None:
    """A bad input fails with an error naming the problem; the next job still succeeds."""
    bad = _send(client_app, **kwargs)
    good = _send(client_app, audio_path="speech_request.flac", language="en")
    with pytest.raises(Exception) as caught:
        bad.get(timeout=JOB_TIMEOUT)
    assert type(caught.value).__name__ == exc_type
    assert words in str(caught.value)
    assert word_error_rate(TEXTS["speech_request"], _ok(good)["text"]) <= MAX_WER


def test_memory_error_completes_lightweight(
    client_app: Celery, worker: WorkerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A real MemoryError in the normal path (test allocation hook) completes lightweight."""
    worker.stop()  # only the worker with test hooks on may take the next job
    start_worker("transcribe", MLWORKER_TEST_HOOKS="1")
    hook = {MEMORY_ERROR_HOOK: "normal"}
    result = _ok(_send(client_app, audio_path="speech_short.flac", language="en", **hook))
    assert result["mode"] == "lightweight"
    assert "MemoryError" in result["mode_reason"]
    assert word_error_rate(TEXTS["speech_short"], result["text"]) <= MAX_WER
