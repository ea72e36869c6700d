"""Long-recording fan-out: chunks cut at pauses, run as jobs by real workers, stitched.

The recording is real speech (``tests/fixtures/speech``: the licence reading, JFK and four
sentences, laid end to end with pauses), 120 s long; the workers fan out above 30 s in
chunks of at least 35 s, so it runs as three or four chunks (a real deployment: 600 s and
120 s).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from celery import Celery
from celery.result import AsyncResult

from tasks.transcription.audio import SAMPLE_RATE, DecodedAudio
from tasks.transcription.fanout import (
    LANGUAGE_WINDOW_S,
    Chunk,
    cut_points,
    first_speech,
    part_of,
    speech_of,
    stitch,
)
from tasks.transcription.options import TranscribeOptions, TranscriptResult, parse_request
from tasks.transcription.results import TranscriptSegment, Word
from tests.fixtures.make_audio import write_audio
from tests.fixtures.speech import reference, samples
from tests.support import WorkerProcess
from tests.transcription_support import parse_cues, word_error_rate
from worker.errors import InvalidInput

TASK = "tasks.transcribe"
FANOUT = {
    "MLWORKER_TRANSCRIBE_FANOUT_AFTER_S": "30",
    "MLWORKER_TRANSCRIBE_FANOUT_CHUNK_S": "35",
    "MLWORKER_THREADS_PER_CHILD": "1",
}
JOB_TIMEOUT_S = 300


def _recording() -> tuple[np.ndarray, str]:
    gap = np.zeros(SAMPLE_RATE, np.float32)
    names = ["long_licence_jfk", "long_sentences", "long_licence_jfk"]
    pieces = [p for name in names for p in (samples(name), gap)][:-1]
    return np.concatenate(pieces), " ".join(reference(n) for n in names)


@pytest.fixture(scope="module")
def recording(input_root: Path) -> tuple[str, str]:
    """The 120 s recording under the input root: (its path there, its reference text)."""
    audio, text = _recording()
    write_audio(input_root / "fanout.flac", audio)
    return "fanout.flac", text


def _chunk_count() -> int:
    return len(cut_points(_recording()[0], float(FANOUT["MLWORKER_TRANSCRIBE_FANOUT_CHUNK_S"])))


def _send(app: Celery, path: str, **kwargs: Any) -> AsyncResult:
    return app.send_task(TASK, kwargs={"audio_path": path, **kwargs})


def _wait_for_chunks(app: Celery, job: AsyncResult, timeout: float = 120.0) -> dict[str, Any]:
    """The job's first PROGRESS record of its chunks (they are all sent by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = app.backend.get_task_meta(job.id)
        info = meta.get("result")
        if meta["status"] == "PROGRESS" and isinstance(info, dict) and "chunks" in info:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job.id} never reported its chunks")


# --- the Celery-free parts -----------------------------------------------------------------


def test_cut_points_fall_in_pauses_and_cover_the_recording() -> None:
    """Every cut lies in a pause of the speech, chunks tile the recording in order and are
    at least ``chunk_s`` long (but the last)."""
    audio, _ = _recording()
    chunks = cut_points(audio, 35.0)
    assert len(chunks) >= 3
    assert chunks[0].start_s == 0.0 and chunks[-1].end_s == pytest.approx(len(audio) / SAMPLE_RATE)
    loud = float(np.sqrt(np.mean(audio[np.abs(audio) > 0.01] ** 2)))  # speech level
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.end_s == after.start_s and before.end_s - before.start_s >= 35.0
        cut = int(before.end_s * SAMPLE_RATE)
        around = audio[cut - SAMPLE_RATE // 8 : cut + SAMPLE_RATE // 8]  # 125 ms each side
        assert float(np.sqrt(np.mean(around**2))) < 0.1 * loud  # a pause, not speech


def test_one_vad_pass_gives_the_cuts_and_the_speech_the_language_is_read_from() -> None:
    """The parent runs the VAD once: the cuts from its spans are those of a pass of their
    own, and the language is read from the first 30 s of speech, pauses left out (a silent
    recording: its first 30 s)."""
    audio, _ = _recording()
    speech = speech_of(audio)
    assert cut_points(audio, 35.0, speech) == cut_points(audio, 35.0)
    heard = first_speech(audio, speech)
    assert len(heard) == int(LANGUAGE_WINDOW_S * SAMPLE_RATE)
    first, second = speech[0], speech[1]
    one = first["end"] - first["start"]
    assert np.array_equal(heard[:one], audio[first["start"] : first["end"]])
    assert np.array_equal(heard[one : one + 100], audio[second["start"] : second["start"] + 100])
    silence = np.zeros(90 * SAMPLE_RATE, np.float32)
    assert len(first_speech(silence, speech_of(silence))) == int(LANGUAGE_WINDOW_S * SAMPLE_RATE)


def test_stitch_puts_chunks_on_the_recording_clock() -> None:
    """Segments and words move by their chunk's start, stay inside it, keep their order."""
    options = TranscribeOptions(word_timestamps=True, output_formats=("text", "srt"))

    def chunk_result(text: str, end: float) -> TranscriptResult:
        words = (Word(0.1, 0.5, " " + text.split()[0], 0.9),)
        segment = TranscriptSegment(0.1, end, text, words)
        return TranscriptResult(text, "en", 0.9, end, [segment], options)

    parts = [part_of(chunk_result("first part", 9.0)), part_of(chunk_result("second one", 99.0))]
    chunks = [Chunk(0, 0.0, 10.0), Chunk(1, 10.0, 20.0)]
    result = stitch(
        parts, chunks, options, language="en", language_probability=0.9, duration_s=20.0,
        trimmed_from_s=None,
    ).as_dict()  # fmt: skip
    assert result["text"] == "first part second one"
    assert [(s["start"], s["end"]) for s in result["segments"]] == [(0.1, 9.0), (10.1, 20.0)]
    assert [(w["start"], w["word"]) for w in result["words"]] == [
        (0.1, " first"),
        (10.1, " second"),
    ]
    assert [c[2] for c in parse_cues(result["srt"], "srt")] == ["first part", "second one"]
    assert result["fanout"] == {"chunks": 2, "bounds_s": [[0.0, 10.0], [10.0, 20.0]]}


@pytest.mark.parametrize(
    "fanout",
    [
        "x",
        {"parent": "p", "token": "t", "index": 0, "start_s": 0},
        {"parent": "p", "token": "t", "index": -1, "start_s": 0, "end_s": 1},
        {"parent": "p", "token": "t", "index": 0, "start_s": 5, "end_s": 1},
        {"parent": "", "token": "t", "index": 0, "start_s": 0, "end_s": 1},
    ],
)
def test_malformed_chunk_fields_are_invalid_input(fanout: object, input_root: Path) -> None:
    from config import Settings

    settings = Settings(input_root=input_root)  # type: ignore[call-arg]
    with pytest.raises(InvalidInput) as caught:
        parse_request({"audio_path": "fanout.flac", "fanout": fanout}, settings)
    assert caught.value.field == "fanout"


# --- through real workers --------------------------------------------------------------------


@pytest.fixture(scope="class")
def two_children(
    recording: tuple[str, str], start_worker: Callable[..., WorkerProcess]
) -> Iterator[WorkerProcess]:
    proc = start_worker("transcribe", concurrency=2, **FANOUT)
    yield proc
    proc.stop()


def _single_pass(audio: np.ndarray, cache: Path) -> str:
    """One pass over the whole recording in this process, as a worker child runs it."""
    from config import Settings
    from tasks.transcription import pipeline
    from tasks.transcription.models import load_whisper

    settings = Settings(threads_per_child=2, model_cache_dir=cache)  # type: ignore[call-arg]
    model = load_whisper(settings).model
    return pipeline.transcribe(DecodedAudio(audio), TranscribeOptions(), model=model).text


class TestTwoChildren:
    """One worker with two single-thread children (stopped before the one-child tests)."""

    @pytest.mark.slow
    def test_long_recording_is_chunked_spread_and_stitched(
        self,
        client_app: Celery,
        two_children: WorkerProcess,
        recording: tuple[str, str],
        stack_dirs: dict[str, Path],
    ) -> None:
        """The chunks run on both children, progress counts them, the stitched transcript is
        in order on the recording's clock (segments, words, SRT agree) and its WER is within
        0.01 of one pass over the same audio."""
        path, text = recording
        cache = stack_dirs["cache"]
        formats = ["text", "segments", "srt", "vtt"]
        job = _send(client_app, path, word_timestamps=True, output_formats=formats)
        seen = [_wait_for_chunks(client_app, job)]
        while not job.ready():
            info = client_app.backend.get_task_meta(job.id).get("result")
            if isinstance(info, dict) and "chunks_done" in info:
                seen.append(info)
            time.sleep(0.05)
        result = job.get(timeout=JOB_TIMEOUT_S)
        count = _chunk_count()
        done = [s["chunks_done"] for s in seen]
        assert done == sorted(done) and done[0] == 0 and {s["chunks"] for s in seen} == {count}
        assert result["fanout"]["chunks"] == count and result["language"] == "en"
        assert result["duration_s"] == pytest.approx(120.5, abs=0.5)
        starts = [s["start"] for s in result["segments"]]
        assert starts == sorted(starts)
        for segment in result["segments"]:
            assert 0 <= segment["start"] <= segment["end"] <= result["duration_s"]
        words = [w["start"] for w in result["words"]]
        assert words == sorted(words) and words[-1] > 100
        assert [c[2] for c in parse_cues(result["srt"], "srt")] == [
            s["text"] for s in result["segments"]
        ]
        pids = {
            client_app.backend.get_task_meta(f"{job.id}:chunk:{i}")["result"]["worker"]["pid"]
            for i in range(count)
        }
        assert len(pids) == 2  # the chunks ran on both children
        single = _single_pass(_recording()[0], cache)
        assert word_error_rate(text, result["text"]) <= word_error_rate(text, single) + 0.01

    @pytest.mark.slow
    def test_forged_chunk_message_fails_alone(
        self, client_app: Celery, two_children: WorkerProcess, recording: tuple[str, str]
    ) -> None:
        """A chunk message naming a fan-out that is not running fails with InvalidInput on its
        ``fanout`` field, and stores nothing under the job it names."""
        forged = {"parent": "someone-else", "token": "0" * 32, "index": 0, "start_s": 0, "end_s": 5}
        job = _send(client_app, recording[0], fanout=forged)
        with pytest.raises(InvalidInput, match="fanout"):
            job.get(timeout=JOB_TIMEOUT_S)
        assert client_app.backend.get_task_meta("someone-else")["status"] == "PENDING"


@pytest.fixture
def one_child(
    recording: tuple[str, str], start_worker: Callable[..., WorkerProcess]
) -> Iterator[WorkerProcess]:
    proc = start_worker("transcribe", concurrency=1, **FANOUT)
    yield proc
    proc.stop()


@pytest.mark.slow
def test_cancelling_the_job_drops_its_chunks(
    client_app: Celery, one_child: WorkerProcess, recording: tuple[str, str]
) -> None:
    """Revoking the job while its first chunk runs: the chunks not started are dropped
    (REVOKED), the job ends REVOKED, and no transcript is stored."""
    job = _send(client_app, recording[0], language="en")
    _wait_for_chunks(client_app, job)
    job.revoke()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [
            client_app.backend.get_task_meta(f"{job.id}:chunk:{i}")["status"]
            for i in range(1, _chunk_count())
        ]
        if all(s in ("REVOKED", "SUCCESS") for s in states) and job.state == "REVOKED":
            break
        time.sleep(0.2)
    assert job.state == "REVOKED"
    assert "REVOKED" in states
    time.sleep(2.0)  # the running chunk finishes: it must not complete the job
    assert job.state == "REVOKED"


@pytest.mark.slow
def test_killed_chunk_is_delivered_again(
    client_app: Celery, one_child: WorkerProcess, recording: tuple[str, str]
) -> None:
    """kill -9 of the child while it runs a chunk: that chunk is delivered again, and the
    job still comes back whole."""
    path, text = recording
    job = _send(client_app, path, language="en")
    _wait_for_chunks(client_app, job)
    time.sleep(1.0)  # the first chunk is decoding
    assert one_child.process is not None
    [child] = psutil.Process(one_child.process.pid).children()
    os.kill(child.pid, signal.SIGKILL)
    result = job.get(timeout=JOB_TIMEOUT_S)
    assert result["fanout"]["chunks"] == _chunk_count()
    assert word_error_rate(text, result["text"]) <= 0.1
    first = client_app.backend.get_task_meta(f"{job.id}:chunk:0")["result"]
    assert first["worker"]["pid"] != child.pid  # run again by the new child


@pytest.mark.slow
def test_chunk_that_fails_for_good_fails_the_job(
    client_app: Celery, one_child: WorkerProcess, input_root: Path
) -> None:
    """The file turns unreadable after the chunks were sent: the chunks that read it fail,
    and the job fails with the first failed chunk's reason."""
    write_audio(input_root / "vanishing.flac", _recording()[0])
    job = _send(client_app, "vanishing.flac", language="en")
    _wait_for_chunks(client_app, job)
    (input_root / "vanishing.flac").write_bytes(b"not audio any more")
    with pytest.raises(Exception, match=r"chunk \d of \d \(.*\) failed: UnreadableInput") as caught:
        job.get(timeout=JOB_TIMEOUT_S)
    assert type(caught.value).__name__ == "ChunkFailed"


def test_a_job_delivered_again_sends_the_same_chunks(
    client_app: Celery, recording: tuple[str, str], input_root: Path
) -> None:
    """A job whose child died after it sent its chunks runs ``start`` again: the same chunks
    go out (same ids, token, bounds, language: what the first run decided), the progress
    already made stays. Real Redis holds the fan-out; the sends are recorded, not queued."""
    from uuid import uuid4

    from config import Settings
    from tasks.transcription import chunks

    sent: list[dict[str, Any]] = []

    class Sending:
        backend = client_app.backend

        def send_task(self, name: str, **options: Any) -> None:
            assert name == TASK
            sent.append(options)

    settings = Settings(input_root=input_root, transcribe_fanout_chunk_s=35.0)  # type: ignore[call-arg]
    job = parse_request({"audio_path": recording[0]}, settings)
    audio, job_id = _recording()[0], f"redelivered-{uuid4()}"
    app: Any = Sending()
    count = chunks.start(
        app, job_id, job, audio, settings, language=("en", 0.9), queue="transcribe", priority=3
    )
    first = list(sent)
    progress = {"fraction": 0.5, "phase": "chunks", "chunks": count, "chunks_done": 2}
    client_app.backend.store_result(job_id, progress, "PROGRESS")
    sent.clear()
    again = chunks.start(
        app, job_id, job, audio, settings, language=("de", 0.1), queue="transcribe", priority=3
    )
    assert count == again == _chunk_count()
    assert [m["task_id"] for m in sent] == [m["task_id"] for m in first]
    assert [m["kwargs"] for m in sent] == [m["kwargs"] for m in first]
    assert {m["kwargs"]["language"] for m in sent} == {"en"}  # decided by the first run
    assert {m["priority"] for m in sent} == {3} and {m["queue"] for m in sent} == {"transcribe"}
    lengths = [m["kwargs"]["fanout"]["end_s"] - m["kwargs"]["fanout"]["start_s"] for m in sent]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    assert client_app.backend.get_task_meta(job_id)["result"]["chunks_done"] == 2
