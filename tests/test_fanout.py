"""Long-recording fan-out: chunks cut at pauses, run as jobs by real workers, stitched.

The recording is real speech (``tests/fixtures/speech``: the licence reading, JFK and four
sentences, laid end to end with pauses), 120 s long; the workers fan out above 30 s in
chunks of at least 35 s, so it runs as three or four chunks (a real deployment: 600 s and
120 s).
"""

from __future__ import annotations

import json
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
    cut_after,
    cut_points,
    first_cut,
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


def _chunk_bounds() -> list[tuple[float, float]]:
    """The chunks a worker sends (the first cut from the head, the rest after it)."""
    audio, chunk_s = _recording()[0], float(FANOUT["MLWORKER_TRANSCRIBE_FANOUT_CHUNK_S"])
    cut, _ = first_cut(audio, chunk_s)
    assert cut is not None
    return [(c.start_s, c.end_s) for c in cut_after(audio, chunk_s, cut)]


def _chunk_count() -> int:
    return len(_chunk_bounds())


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
    at least ``chunk_s`` long (but the last): cut in one pass, and as a worker cuts them
    (the first chunk from the head's VAD, the rest from the rest's)."""
    audio, _ = _recording()
    cut, _ = first_cut(audio, 35.0)
    assert cut is not None
    for chunks in (cut_points(audio, 35.0), cut_after(audio, 35.0, cut)):
        assert len(chunks) >= 3
        assert chunks[0].start_s == 0.0
        assert chunks[-1].end_s == pytest.approx(len(audio) / SAMPLE_RATE)
        loud = float(np.sqrt(np.mean(audio[np.abs(audio) > 0.01] ** 2)))  # speech level
        for before, after in zip(chunks, chunks[1:], strict=False):
            assert before.end_s == after.start_s and before.end_s - before.start_s >= 35.0
            cut = int(before.end_s * SAMPLE_RATE)
            around = audio[cut - SAMPLE_RATE // 8 : cut + SAMPLE_RATE // 8]  # 125 ms each side
            assert float(np.sqrt(np.mean(around**2))) < 0.1 * loud  # a pause, not speech


def test_the_head_settles_the_first_cut_or_says_it_cannot() -> None:
    """The first chunk's end found from the head alone is the one pass's; a head whose
    speech runs on past it (no pause after the cut window), one too short to read the
    language from, or a recording the head covers, gives None and the whole recording's
    speech."""
    audio, _ = _recording()
    cut, head = first_cut(audio, 35.0)
    assert cut is not None and cut / SAMPLE_RATE == cut_points(audio, 35.0)[0].end_s
    assert head[-1]["end"] <= int(2.5 * 35.0 * SAMPLE_RATE)  # the VAD read the head only
    assert first_speech(audio, head).tolist() == first_speech(audio, speech_of(audio)).tolist()
    assert first_cut(audio, 50.0)[0] is None  # a 125 s head: the whole recording
    whole = speech_of(audio)
    assert first_cut(audio, 50.0)[1] == whole
    assert first_cut(audio, 8.0) == (None, whole)  # a 20 s head: under 30 s of speech
    talk = np.tile(samples("long_sentences")[: 2 * SAMPLE_RATE], 60)  # no pause of 0.5 s
    found, speech = first_cut(talk, 35.0)
    assert found is None and speech == speech_of(talk)


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


class _Sending:
    """An app whose sends are recorded, not queued; Redis (the fan-out's state) is real.
    ``on_send(options)``: called after each send is recorded."""

    def __init__(self, app: Celery, on_send: Callable[[dict[str, Any]], None] | None = None):
        self.backend = app.backend
        self.sent: list[dict[str, Any]] = []
        self.on_send = on_send

    def send_task(self, name: str, **options: Any) -> None:
        assert name == TASK
        self.sent.append(options)
        if self.on_send is not None:
            self.on_send(options)


def _start(app: Any, job_id: str, path: str, input_root: Path, language: str) -> int:
    from config import Settings
    from tasks.transcription import chunks

    settings = Settings(input_root=input_root, transcribe_fanout_chunk_s=35.0)  # type: ignore[call-arg]
    job = parse_request({"audio_path": path}, settings)
    return chunks.start(
        app,
        job_id,
        job,
        _recording()[0],
        settings,
        detect=lambda heard: (language, 0.9),
        queue="transcribe",
        priority=3,
    )


def test_a_job_delivered_again_sends_the_same_chunks(
    client_app: Celery, recording: tuple[str, str], input_root: Path
) -> None:
    """A job whose child died after it sent its chunks runs ``start`` again: the same chunks
    go out (same ids, token, bounds, language: what the first run decided), the progress
    already made stays."""
    from uuid import uuid4

    app = _Sending(client_app)
    job_id = f"redelivered-{uuid4()}"
    count = _start(app, job_id, recording[0], input_root, "en")
    first = list(app.sent)
    progress = {"fraction": 0.5, "phase": "chunks", "chunks": count, "chunks_done": 2}
    client_app.backend.store_result(job_id, progress, "PROGRESS")
    app.sent.clear()
    again = _start(app, job_id, recording[0], input_root, "de")
    sent = app.sent
    assert count == again == _chunk_count()
    assert sorted(m["task_id"] for m in sent) == sorted(m["task_id"] for m in first)
    assert sorted(map(str, (m["kwargs"] for m in sent))) == sorted(
        map(str, (m["kwargs"] for m in first))
    )
    assert {m["kwargs"]["language"] for m in sent} == {"en"}  # decided by the first run
    assert {m["priority"] for m in sent} == {3} and {m["queue"] for m in sent} == {"transcribe"}
    lengths = [m["kwargs"]["fanout"]["end_s"] - m["kwargs"]["fanout"]["start_s"] for m in sent]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    assert client_app.backend.get_task_meta(job_id)["result"]["chunks_done"] == 2


def test_a_job_delivered_again_before_its_rest_was_planned_keeps_its_first_chunk(
    client_app: Celery, recording: tuple[str, str], input_root: Path
) -> None:
    """The child died after the first chunk went out, before the rest was planned: the run
    again keeps that chunk's end and the language the first run decided, and sends every
    chunk (the first again: admission skips it if it has its result)."""
    from uuid import uuid4

    class Died(Exception):
        pass

    def die(options: dict[str, Any]) -> None:
        raise Died

    job_id = f"half-planned-{uuid4()}"
    dying = _Sending(client_app, die)
    with pytest.raises(Died):
        _start(dying, job_id, recording[0], input_root, "en")
    [early] = dying.sent
    assert early["task_id"] == f"{job_id}:chunk:0"
    app = _Sending(client_app)
    assert _start(app, job_id, recording[0], input_root, "de") == _chunk_count()
    assert sorted(m["task_id"] for m in app.sent) == [
        f"{job_id}:chunk:{i}" for i in range(_chunk_count())
    ]
    again = next(m for m in app.sent if m["task_id"] == early["task_id"])
    assert again["kwargs"] == early["kwargs"]  # same end, same token, language "en"
    bounds = [(m["kwargs"]["fanout"]["start_s"], m["kwargs"]["fanout"]["end_s"]) for m in app.sent]
    assert sorted(bounds) == _chunk_bounds()


def test_the_first_chunk_goes_out_before_the_rest_is_planned(
    client_app: Celery, recording: tuple[str, str], input_root: Path
) -> None:
    """Chunk 0 is sent once the head settles its end, before the count is known; ending at
    once (before the rest is planned), it is counted by ``start`` and still only once."""
    from uuid import uuid4

    from config import Settings
    from tasks.transcription import chunks
    from tasks.transcription.options import parse_chunk

    job_id = f"early-{uuid4()}"
    key = chunks.KEY.format(job_id)
    planned_when_sent: list[bool] = []

    def end_at_once(options: dict[str, Any]) -> None:
        ref = parse_chunk(options["kwargs"]["fanout"])
        planned_when_sent.append(client_app.backend.client.hexists(key, "chunks"))
        if ref.index == 0:
            chunks.record(app, ref, {"segments": [], "path": "plain"}, None, Settings())  # type: ignore[arg-type]

    app = _Sending(client_app, end_at_once)
    count = _start(app, job_id, recording[0], input_root, "en")
    assert app.sent[0]["task_id"] == f"{job_id}:chunk:0"
    assert planned_when_sent == [False] + [True] * (count - 1)
    assert client_app.backend.get_task_meta(job_id)["result"]["chunks_done"] == 1
    first = parse_chunk(app.sent[0]["kwargs"]["fanout"])
    assert (first.start_s, first.end_s) == (0.0, _chunk_bounds()[0][1])
    chunks.record(app, first, {"segments": [], "path": "plain"}, None, Settings())  # type: ignore[arg-type]
    assert client_app.backend.client.scard(key + ":done") == 1


def test_the_stitch_is_sent_once_by_whoever_finds_the_set_complete(
    client_app: Celery, recording: tuple[str, str], input_root: Path
) -> None:
    """The last chunk's child died after counting it, before sending the job to be stitched:
    that chunk, delivered again and told again, sends it. Told once more, or the job itself
    delivered again, nothing more is sent: one stitch."""
    from uuid import uuid4

    from config import Settings
    from tasks.transcription import chunks
    from tasks.transcription.options import parse_chunk
    from worker import deferred
    from worker.admission import Ticket

    job_id = f"ended-{uuid4()}"
    client = client_app.backend.client
    key = chunks.KEY.format(job_id)
    app = _Sending(client_app)
    ticket = Ticket(id=job_id, task=TASK, kwargs={"audio_path": recording[0]}, queue="transcribe")
    deferred.keep(client, ticket, 60)  # ``RunContext.deferring``, before ``start``
    count = _start(app, job_id, recording[0], input_root, "en")
    refs = [parse_chunk(m["kwargs"]["fanout"]) for m in app.sent]
    part = {"segments": [], "path": "plain"}
    for ref in refs[:-1]:
        chunks.record(app, ref, part, None, Settings())  # type: ignore[arg-type]
    client.hset(key + ":parts", str(refs[-1].index), json.dumps(part))  # counted, then died
    client.sadd(key + ":done", refs[-1].index)
    assert [m for m in app.sent if m["task_id"] == job_id] == []
    chunks.record(app, refs[-1], part, None, Settings())  # type: ignore[arg-type]
    stitches = [m for m in app.sent if m["task_id"] == job_id]
    assert len(stitches) == 1 and stitches[0]["kwargs"]["fanout_stitch"] == refs[0].token
    chunks.record(app, refs[-1], part, None, Settings())  # type: ignore[arg-type]
    deferred.keep(client, ticket, 60)  # the job delivered again keeps itself again
    assert _start(app, job_id, recording[0], input_root, "en") == count
    assert len([m for m in app.sent if m["task_id"] == job_id]) == 1
